"""The labeling job: planning, commit protocol, workers and the Ray runner (the only Ray importer)."""
