"""The search behind `python -m adr_scale.tune`: the space (`space`), the rung-keeping schedulers
(`schedulers`), a resumed search (`resume`), the driver with its trials and the confirmation's
Tune grid (`driver`), the confirmation's bookkeeping (`confirm`), statistics (`stats`) and the
report (`report`). Only `driver`, `schedulers` and `resume` import Ray; nothing is imported here."""
