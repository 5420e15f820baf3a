"""The Azure target: every stage in the user's Azure Machine Learning workspace, through azure-ai-ml and
the Azure management SDKs (identity, authorization, quota). `target.AzureTarget` assembles the modules
beside it (catalog, quota, rbac, assets, finetune, online, foundry) behind `targets.base.Target`.
"""
