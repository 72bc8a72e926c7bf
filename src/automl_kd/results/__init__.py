"""Results of a run: leaderboard, plots, the HTML report, finalize, export, transfer to other datasets."""
