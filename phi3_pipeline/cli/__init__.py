"""The command line: `python -m flows.full_pipeline`, `python -m flows.teardown` and the `phi3-pipeline`
console script. The flows never import it; each flow module hands its flow to it when run as a command."""
