"""Operating the service: the project's ``dagster`` command wrapper, the instance settings (dagster.yaml)
and the README's generated data dictionary (``make docs``)."""
