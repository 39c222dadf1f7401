"""Synthetic data for adr-scale: generate or shard images into WebDataset tars with a manifest.

    python -m data_pipeline.generate_ddpm --model DIR --num-images N --out shards/NAME --labeler CKPT
    python -m data_pipeline.shard_npz --npz FILE.npz --out shards/NAME
    python -m data_pipeline.verify shards/NAME

The format is defined once in `adr_scale.shard_format` (written by shards.py, read by the decoded
cache of `adr_scale.data.synthetic`); docs/data.md describes both sides.
"""
