"""The ordered, replicated log (pysyncobj): not built yet. See issue 4 and
STORAGE_ENGINE_PLAN.md ("What is left")."""
