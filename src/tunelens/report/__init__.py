"""Stage 4: tables, terminal output, plots and the HTML report."""
