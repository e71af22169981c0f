"""Dagster resources: one warehouse engine per process and URL, shared by every asset and check of a step."""
from assets.resources import WarehouseResource


def test_the_warehouse_engine_is_built_once_per_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'a' / 'w.sqlite'}"
    first, again = WarehouseResource(url=url).get(), WarehouseResource(url=url).get()
    assert first is again and first.engine is again.engine
    assert (tmp_path / "a").is_dir()  # the SQLite file's directory is made on first use
    assert WarehouseResource(url=f"sqlite:///{tmp_path / 'b.sqlite'}").get() is not first
