"""A run's directory and what it leaves: the layout, atomic writes and resume checks
(`directory`), what a person reads there (`outputs`: metrics, summaries, plots), the lock, the
writability checks and a diverged run's error (`lock`), the files in a Ray run's and a Tune
trial's checkpoints (`files`), and where a result came from (`provenance`). No Ray; nothing is
imported here."""
