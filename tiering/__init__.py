"""Cold tier (sealed segments, zstd, pyeclib shards, HWM): not built yet. See issue 5
and STORAGE_ENGINE_PLAN.md ("What is left")."""
