"""The helpers deploy.sh and local-airflow.sh call, stdlib only (the host's python3, no venv):
``PYTHONPATH=src python3 -m deploytools SUBCOMMAND ...`` (``commands`` lists them). Not part of
the pipeline's package, nor of the image."""
