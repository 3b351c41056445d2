"""Everything that reads a finished run: typed results, prediction, (later) reports, explanations, export."""
