"""The per-tile job.toml copies that `mask demo` writes for the render."""

from maskd.demo import dump_toml, examples_dir, format_mask, load_compose, tile_specs
from scheduler.spec import load_spec


def test_tile_specs_keep_the_render_job_but_its_args(tmp_path):
    examples = examples_dir()
    plan = load_compose(examples).plan_tiles(640, 480, 160)
    paths = tile_specs(examples, tmp_path, plan)
    assert len(paths) == 12
    original = load_spec(examples / "render" / "job.toml")
    for path, args in zip(paths, plan, strict=True):
        spec = load_spec(path)
        assert list(spec.args) == args
        assert spec.program == original.program  # the absolute render.wasm
        assert spec.resources == original.resources and spec.price == original.price
        assert spec.verify == original.verify and spec.name == original.name


def test_dump_toml_round_trips():
    import tomllib

    doc = {"a": 'x "q" é', "n": 1_000_000_000, "l": ["1", "2"], "t": {"b": True, "u": {"f": 0.5}}}
    assert tomllib.loads(dump_toml(doc)) == doc


def test_format_mask():
    assert format_mask(16875000000000) == "0.000016875"
    assert format_mask(10**18) == "1"
    assert format_mask(None) == "-"
