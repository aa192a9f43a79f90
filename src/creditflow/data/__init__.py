"""Data: files of applicants, the dataset spec's value rules, loading and splitting, the generated default."""
