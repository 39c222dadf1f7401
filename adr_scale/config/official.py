"""The official configurations' differences from the paper's text, and the presets built from them.

The paper's Sec. 5.1 grid (dataset x architecture x AT / TRADES x WA x AWP x ADR), the Sec. 5.4
DDPM runs and the SVHN grid are registered here: each preset is the paper-text configuration
(`paper_variant`, `ddpm_paper_text`, `svhn_base`) with the official gin file's bindings
(`_GIN_DIFFS`) and what the official code fixes whatever a gin file binds (`_official_code`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adr_scale.config.presets import OFFICIAL_CODE, Recipe, _edit, preset, svhn_base
from adr_scale.config.schema import RunConfig

# The paper's Sec. 5.1 text per dataset: (epochs, tau_start, tau_end, lambda_start, lambda_end)
_PAPER_ADR = {
    "cifar10": (200, 2.5, 2.0, 0.7, 0.95),
    "cifar100": (200, 1.5, 1.0, 0.7, 0.95),
    "tinyimagenet200": (80, 2.0, 1.5, 0.5, 0.9),
}
_GIN_DIR = {"cifar10": "cifar10", "cifar100": "cifar100", "tinyimagenet200": "tiny-imagenet"}
_GIN_ARCH = {"resnet18": "resnet18", "wrn34_10": "wrn"}

# The bindings of the official gin files (config/<dataset>/<arch>_<pgd|trades>_<sgd|awp>[_adr].gin)
# that differ from the paper's text, keyed by (dataset, arch, method, awp). adr.* entries come
# from the _adr file and apply to ADR presets only; awp.* entries hold for both files. A setting
# absent here has no gin file (WRN-34-10 with TRADES); {} binds exactly the paper's values.
_GIN_DIFFS: dict[tuple[str, str, str, bool], dict[str, Any]] = {
    ("cifar10", "resnet18", "at", False): {},
    ("cifar10", "resnet18", "at", True): {"adr.tau_end": 1.5, "adr.lambda_end": 0.85},
    ("cifar10", "resnet18", "trades", False): {},
    ("cifar10", "resnet18", "trades", True): {"adr.tau_end": 1.5, "adr.lambda_end": 0.85},
    ("cifar10", "wrn34_10", "at", False): {},
    ("cifar10", "wrn34_10", "at", True): {"adr.tau_end": 1.5, "adr.lambda_end": 0.85},
    ("cifar100", "resnet18", "at", False): {},
    ("cifar100", "resnet18", "at", True): {"adr.tau_start": 2.0, "adr.lambda_end": 0.85},
    ("cifar100", "resnet18", "trades", False): {},
    ("cifar100", "resnet18", "trades", True): {},  # the paper's tau / lambda, unlike PGD-AT's
    ("cifar100", "wrn34_10", "at", False): {},
    ("cifar100", "wrn34_10", "at", True): {"adr.tau_start": 2.0, "adr.lambda_end": 0.85},
    # resnet18_pgd_sgd_adr.gin misspells `tmperature_low` (gin refuses to parse it as shipped);
    # its intended values are the paper's.
    ("tinyimagenet200", "resnet18", "at", False): {},
    ("tinyimagenet200", "resnet18", "at", True): {"adr.lambda_start": 0.3, "awp.gamma": 0.001},
    ("tinyimagenet200", "resnet18", "trades", False): {},
    ("tinyimagenet200", "resnet18", "trades", True): {"awp.gamma": 0.001},
    ("tinyimagenet200", "wrn34_10", "at", False): {},
    ("tinyimagenet200", "wrn34_10", "at", True): {"awp.gamma": 0.001},
}


def _official_code(cfg: RunConfig) -> dict[str, Any]:
    """What the official code fixes whatever a gin file binds (paths in yuyuwu5/ADR's src/)."""
    edits: dict[str, Any] = {}
    if cfg.model.arch in ("preact_resnet18", "wrn34_10"):
        # model/preact_resnet.py, model/wideresnet.py: DeepMind's blocks with TF-SAME padding
        edits["model.arch"] = f"{cfg.model.arch}_dm"
    if cfg.train.method == "trades":
        # util/trades_attack.py and advTrainer.py: train mode, 0.001 U[0, 1) start, one forward
        # of the concatenated clean + adversarial batch
        edits["train.trades_attack"] = "official"
    if cfg.awp.enabled:
        # util/optimizer_scheduler.py: the AWP base optimizer is torch SGD without Nesterov
        # (only the plain-SGD builder passes nesterov=True)
        edits["optim.nesterov"] = False
    if cfg.data.synthetic:
        # advTrainer.py with auxiliary data: BN momentum 1.0 for the first step, then 0.01;
        # optimizer_scheduler.group_weight: no weight decay on BatchNorm parameters
        edits |= {"model.bn_momentum": 0.01, "model.bn_momentum_step0": 1.0,
                  "optim.no_decay_norm_bias": True}
    return edits


def paper_base(dataset: str, arch: str) -> RunConfig:
    """The Sec. 5.1 text for a dataset and architecture, ADR off (AT, piecewise LR, batch 128)."""
    epochs, tau0, tau1, lam0, lam1 = _PAPER_ADR[dataset]
    cfg = RunConfig()
    cfg.data.dataset = dataset
    cfg.data.root = f"data/{dataset}"
    cfg.model.arch = arch
    cfg.train.epochs = epochs
    cfg.adr.tau_start, cfg.adr.tau_end = tau0, tau1
    cfg.adr.lambda_start, cfg.adr.lambda_end = lam0, lam1
    return cfg


def paper_variant(dataset: str, arch: str, method: str, wa: bool, awp: bool, adr: bool) -> RunConfig:
    """The paper-text configuration of one cell of Table 2 (AT) or Table 4 (TRADES)."""
    cfg = paper_base(dataset, arch)
    cfg.train.method = method
    cfg.train.wa = wa
    cfg.awp.enabled = awp
    cfg.adr.enabled = adr
    return cfg


def gin_file(dataset: str, arch: str, method: str, awp: bool, adr: bool) -> str | None:
    """The official gin file of a Table 2 / 4 setting (WA is an evaluation flag there), or None."""
    if (dataset, arch, method, awp) not in _GIN_DIFFS:
        return None
    return (f"config/{_GIN_DIR[dataset]}/{_GIN_ARCH[arch]}_{'pgd' if method == 'at' else method}"
            f"_{'awp' if awp else 'sgd'}{'_adr' if adr else ''}.gin")


def _official_recipe(dataset: str, arch: str, method: str, wa: bool, awp: bool, adr: bool,
                     ) -> Recipe:
    """The paper-text cell, then its gin file's bindings (adr.* only with ADR) and what the
    official code fixes (_official_code)."""
    setting = {"dataset": dataset, "arch": arch, "method": method, "wa": wa, "awp": awp, "adr": adr}
    diffs = _GIN_DIFFS.get((dataset, arch, method, awp), {})
    edits = {k: v for k, v in diffs.items() if adr or not k.startswith("adr.")}
    gin = gin_file(dataset, arch, method, awp, adr)
    return Recipe(builder=paper_variant, args=setting,
                  edits=edits | _official_code(paper_variant(**setting)),
                  generator=f"{__name__}._register_paper_grid",
                  gin=f"{OFFICIAL_CODE} {gin}" if gin else None)


def _title(method: str, wa: bool, awp: bool, adr: bool) -> str:
    parts = [method.upper() if method == "trades" else "AT"]
    parts += [label for on, label in ((wa, "WA"), (awp, "AWP"), (adr, "ADR")) if on]
    return " + ".join(parts)


def _register_paper_grid() -> None:
    """{cifar10, cifar100, tinyimagenet200} x {resnet18, wrn34_10} x {at, trades} x WA x AWP x ADR.

    Names read like the paper's tables: cifar100_resnet18_at_wa_awp_adr is "AT + WA + AWP + ADR".
    preset() appends each function's gin file and its departures from the paper text to its
    docstring; `python -m adr_scale.train --show-preset NAME` prints its recipe.
    """
    for dataset in _PAPER_ADR:
        for arch in ("resnet18", "wrn34_10"):
            for method in ("at", "trades"):
                for wa in (False, True):
                    for awp in (False, True):
                        for adr in (False, True):
                            name = (f"{dataset}_{arch}_{method}" + ("_wa" if wa else "")
                                    + ("_awp" if awp else "") + ("_adr" if adr else ""))
                            setting = (dataset, arch, method, wa, awp, adr)
                            recipe = _official_recipe(*setting)
                            table = "Table 4 (TRADES)" if method == "trades" else "Table 2"
                            fn = recipe.function(name, f"{_title(method, wa, awp, adr)} on "
                                                 f"{dataset}, {arch}: paper Sec. 5.1, {table}.")
                            source = (recipe.gin or "no official config "
                                      "(no gin file; the official code's behaviour applied)")
                            preset(fn, paper=_make(paper_variant, setting), source=source,
                                   recipe=recipe)
        for arch in ("resnet18", "preact_resnet18"):
            # Non-adversarial training of the classifier that pseudo-labels generated images.
            recipe = Recipe(builder=paper_base, args={"dataset": dataset, "arch": arch},
                            edits={"train.method": "standard", "train.wa": True},
                            generator=f"{__name__}._register_paper_grid")
            fn = recipe.function(
                f"{dataset}_{arch}_standard",
                f"Non-adversarial {arch} on {dataset}: the classifier that pseudo-labels "
                "generated images (the official code uses released, labelled sets).")
            preset(fn, source="no official config (the project's pseudo-labeller)", recipe=recipe)


def _make(builder: Callable[..., RunConfig], setting: tuple) -> Callable[[], RunConfig]:
    return lambda: builder(*setting)


# Sec. 5.4 (Table 3): 1M DDPM images. Beyond what _official_code sets, the official DDPM runs
# differ where no field reaches (docs/presets.md): timm's cosine LR warms up from 1e-6 over 2.5
# of 100 epochs of 195 steps (19,500 steps; here 400 CIFAR-equivalent epochs of ceil(49,000 /
# 1024) = 48 steps, 19,200) and is not shifted by the warm-up; AWP is SAM-style (awp.py).
_DDPM_GIN_DIFFS = {  # config/<dataset>/preact-resnet18_pgd_awp_adr.gin against the paper text
    "cifar10": {"adr.tau_end": 1.5, "adr.lambda_end": 0.85},
    "cifar100": {"adr.tau_start": 3.0, "adr.tau_end": 1.5, "adr.lambda_start": 0.5,
                 "adr.lambda_end": 0.8},
}


def ddpm_paper_text(dataset: str, arch: str, awp: bool) -> RunConfig:
    """Sec. 5.4's text: batch 1024 (75 % synthetic), cyclic LR 0.4 with 10 warm-up epochs, 400
    CIFAR-equivalent epochs, SiLU, WA, ADR with Sec. 5.1's tau / lambda; "AT+ADR" (no AWP) in
    Table 3, AWP only where the name says so."""
    cfg = paper_variant(dataset, arch, "at", wa=True, awp=awp, adr=True)
    cfg.data.synthetic = f"shards/{dataset}-ddpm"
    cfg.data.synthetic_fraction = 0.75
    cfg.model.activation = "silu"
    cfg.train.epochs = 400
    cfg.train.batch_size = 1024
    cfg.optim.schedule = "cyclic"
    cfg.optim.lr = 0.4
    cfg.optim.warmup_epochs = 10
    return cfg


def ddpm_base(dataset: str, arch: str, awp: bool = False) -> RunConfig:
    """ddpm_paper_text with the official code's DDPM settings: DeepMind's network, BN momentum
    1.0 then 0.01, no weight decay on BN, and (with AWP) SGD without Nesterov."""
    cfg = ddpm_paper_text(dataset, arch, awp)
    return _edit(cfg, _official_code(cfg))


def _ddpm_official(dataset: str) -> RunConfig:
    return _edit(ddpm_base(dataset, "preact_resnet18", awp=True), _DDPM_GIN_DIFFS[dataset])


@preset(paper=lambda: ddpm_paper_text("cifar100", "preact_resnet18", awp=True),
        source=f"{OFFICIAL_CODE} config/cifar100/preact-resnet18_pgd_awp_adr.gin")
def cifar100_preact_resnet18_ddpm_at_awp_adr() -> RunConfig:
    """The official CIFAR-100 DDPM run behind Table 3's PreAct-ResNet-18 row: PGD-AT with AWP
    (0.005) + ADR, tau 3.0 -> 1.5, lambda 0.5 -> 0.8, where the paper's text says "AT+ADR" with
    Sec. 5.1's values."""
    return _ddpm_official("cifar100")


@preset(paper=lambda: ddpm_paper_text("cifar10", "preact_resnet18", awp=True),
        source=f"{OFFICIAL_CODE} config/cifar10/preact-resnet18_pgd_awp_adr.gin")
def cifar10_preact_resnet18_ddpm_at_awp_adr() -> RunConfig:
    """The official CIFAR-10 DDPM run: PGD-AT with AWP (0.005) + ADR, tau 2.5 -> 1.5, lambda
    0.7 -> 0.85 (the paper reports no CIFAR-10 DDPM result)."""
    return _ddpm_official("cifar10")


@preset(paper=lambda: ddpm_paper_text("cifar100", "preact_resnet18", awp=False),
        source="no official config (the official DDPM configs add AWP: *_ddpm_at_awp_adr)")
def cifar100_preact_resnet18_ddpm_at_adr() -> RunConfig:
    """Table 3's "AT+ADR" as the paper states it: AWP-free, Sec. 5.1's tau / lambda, with the
    official code's DDPM settings (network, BatchNorm, weight decay) on top."""
    return ddpm_base("cifar100", "preact_resnet18")


@preset(paper=lambda: ddpm_paper_text("cifar100", "wrn34_10", awp=False),
        source="no official config (the official repository has no WRN DDPM file)")
def cifar100_wrn34_10_ddpm_at_adr() -> RunConfig:
    """Table 3's WRN-34-10 "AT+ADR" row as the paper states it: AWP-free, Sec. 5.1's tau /
    lambda, with the official code's DDPM settings (network, BatchNorm, weight decay) on top."""
    return ddpm_base("cifar100", "wrn34_10")


@preset(paper=lambda: ddpm_paper_text("cifar10", "preact_resnet18", awp=False),
        source="no official config (the official DDPM configs add AWP: *_ddpm_at_awp_adr)")
def cifar10_preact_resnet18_ddpm_at_adr() -> RunConfig:
    """CIFAR-10 counterpart of cifar100_preact_resnet18_ddpm_at_adr: AWP-free, Sec. 5.1's tau /
    lambda, the official code's DDPM settings on top."""
    return ddpm_base("cifar10", "preact_resnet18")


def _svhn_recipe(wa: bool, awp: bool, adr: bool) -> Recipe:
    flags = {"train.wa": wa, "awp.enabled": awp, "adr.enabled": adr}
    return Recipe(builder=svhn_base, args={},
                  edits=flags | _official_code(_edit(svhn_base(), flags)),
                  generator=f"{__name__}._register_svhn")


def _register_svhn() -> None:
    """svhn_resnet18_at[_wa][_awp][_adr]: the CIFAR grid's names for SVHN (svhn_base's recipe)."""
    for wa in (False, True):
        for awp in (False, True):
            for adr in (False, True):
                name = ("svhn_resnet18_at" + ("_wa" if wa else "") + ("_awp" if awp else "")
                        + ("_adr" if adr else ""))
                recipe = _svhn_recipe(wa, awp, adr)
                fn = recipe.function(name, f"{_title('at', wa, awp, adr)} on SVHN, resnet18: "
                                     + (svhn_base.__doc__ or ""))
                preset(fn, source="no official config (the ADR paper has no SVHN run; each "
                       "value's source: adr_scale.config.svhn_base)", recipe=recipe)


_register_paper_grid()
_register_svhn()
