"""The run's HTML report: RUN_DIR/report/index.html, assembled from sections the stages hand it."""
