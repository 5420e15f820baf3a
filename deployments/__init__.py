"""The Prefect deployments of `prefect.yaml`, served from one process (`python -m deployments.serve`)."""
