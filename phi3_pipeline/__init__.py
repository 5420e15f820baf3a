"""The pipeline's library: configuration, chat data, the targets (local and Azure) and the command line.

The flows (`flows/`), their tasks (`tasks/`) and the Prefect deployments (`deployments/`) live beside it in the
project, where `prefect.yaml` names them; they are not installed.
"""
