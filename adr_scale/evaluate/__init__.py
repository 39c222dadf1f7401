"""`python -m adr_scale.evaluate`: test-set accuracy of checkpoints (see `cli` for the command).

One module per concern: `options` (what the CLI asks for), `checkpoint` (the network and the test
split), `pgd` (clean and PGD-K), `autoattack` (the official attacks, resumable), `sanity`
(gradient-masking checks), `report` (one checkpoint's report), `run_table` (a run's Best / Final
table), `cli`. Export lives beside the models (`adr_scale.models.export`).
"""

from adr_scale.evaluate.autoattack import (
    AABackend,
    AAOutcome,
    attack_chunk,
    autoattack_backend,
    autoattack_flags,
    build_autoattack,
    run_autoattack,
)
from adr_scale.evaluate.checkpoint import LoadedModel, load_model, load_test_set
from adr_scale.evaluate.cli import build_parser, main, options_from_args, run_cli
from adr_scale.evaluate.options import (
    AUTOATTACK_VERSIONS,
    DEFAULT_ATTACKS,
    EvalOptions,
    attack_label,
    format_eps,
    parse_attacks,
    parse_eps,
)
from adr_scale.evaluate.pgd import accuracy, clean_flags, pgd_flags
from adr_scale.evaluate.report import evaluate_checkpoint, ordering_checks, report_markdown
from adr_scale.evaluate.run_table import (
    TEST_SECTION,
    evaluate_run,
    replace_test_section,
    test_markdown,
    test_summary,
)
from adr_scale.evaluate.sanity import (
    SANITY_EPS_255,
    SANITY_STEPS,
    _non_increasing,
    sanity_checks,
    tolerance,
)
from adr_scale.models.export import export_model, load_exported

__all__ = [
    "AABackend", "AAOutcome", "attack_chunk", "autoattack_backend", "autoattack_flags",
    "build_autoattack", "run_autoattack", "LoadedModel", "load_model", "load_test_set",
    "build_parser", "main", "options_from_args", "run_cli", "AUTOATTACK_VERSIONS",
    "DEFAULT_ATTACKS", "EvalOptions", "attack_label", "format_eps", "parse_attacks", "parse_eps",
    "accuracy", "clean_flags", "pgd_flags", "evaluate_checkpoint", "ordering_checks",
    "report_markdown", "TEST_SECTION", "evaluate_run", "replace_test_section", "test_markdown",
    "test_summary", "SANITY_EPS_255", "SANITY_STEPS", "_non_increasing", "sanity_checks",
    "tolerance", "export_model", "load_exported",
]
