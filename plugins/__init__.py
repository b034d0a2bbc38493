"""First-party harness plugins, installed as `harness_plugins` and registered through the same
`harness` entry points a third party uses."""
