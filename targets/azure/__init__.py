"""The Azure target (azure-ai-ml, azure-identity, azure-mgmt-msi, azure-mgmt-authorization).

Not implemented yet: it will implement `targets.base.Target`. Until then `targets.get_target`
refuses target=azure with a clear error instead of pretending to reach Azure.
"""
