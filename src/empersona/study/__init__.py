"""The one-command study: plan, train, evaluate and report from one YAML file."""

