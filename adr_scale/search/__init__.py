"""The search behind `python -m adr_scale.tune`: the space (`space`), the rung-keeping schedulers
(`schedulers`), a resumed search (`resume`), the driver (`driver`: the CLI, the Tuner, the search
then the confirmation), a trial (`trial`: Train runs per stretch, PBT segments, confirmation runs),
the confirmation stage's Tune grid (`confirmation`), its Ray-free bookkeeping (`confirm`),
statistics (`stats`) and the report (`report`). Only `driver`, `trial`, `confirmation`,
`schedulers` and `resume` import Ray; nothing is imported here."""
