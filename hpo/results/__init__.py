"""Stage 5, results: after the search, the best trials retrained and tested, the report, the
handed-over model and its predictions, the tables and the dashboard. Uses every stage below it.
hpo.api and hpo.cli sit on top. docs/development.md maps its modules."""
