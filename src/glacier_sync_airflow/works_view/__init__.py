"""The Works view: the archive's works in the Airflow UI (an Airflow 3 plugin: a FastAPI app
on the API server and a page in the UI's navigation). ``api`` serves the page, the board and
the actions; ``plugin`` registers them with Airflow (entry point ``airflow.plugins``)."""
