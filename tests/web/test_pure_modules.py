"""The dashboard's pure modules, run in the browser exactly as shipped (ES modules under
/assets/js/pure/), against numbers computed here."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import DaemonProcess, kill_daemons
from tests.web.conftest import Watched, start_daemon


def tensorboard_smoothing(values: list[float | None], weight: float) -> list[float | None]:
    """TensorBoard's scalar-card smoothing: a debiased EMA; non-finite values pass through."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    constant = len(set(values)) <= 1
    last, count, out = 0.0, 0, []
    for value in values:
        if constant or value is None or not math.isfinite(value) or not finite:
            out.append(value)
            continue
        last = last * weight + (1 - weight) * value
        count += 1
        out.append(last / (1 - weight**count))
    return out


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[Watched]:
    daemon: DaemonProcess = start_daemon(tmp_path_factory.mktemp("dpd-pure"), auth=False)
    context = browser.new_context()
    watched = Watched(context.new_page(), daemon.url)
    watched.page.goto(daemon.url + "/")
    yield watched
    context.close()
    kill_daemons([daemon])


def run(page: Watched, module: str, body: str, arg: Any = None) -> Any:
    script = f"async (arg) => {{ const m = await import('/assets/js/pure/{module}'); {body} }}"
    return page.page.evaluate(script, arg)


def test_smoothing_gives_tensorboards_numbers(page: Watched) -> None:
    assert run(page, "smoothing.js", "return m.debiasedEma([1, 2, 3], 0.5);") == pytest.approx(
        [1.0, 5 / 3, 2.125 / 0.875]
    )
    rng = random.Random(7)
    values: list[float | None] = [rng.uniform(0.05, 0.2) for _ in range(500)]
    values[100] = None  # a NaN in the log: passed through, the average does not move
    for weight in (0.0, 0.6, 0.9, 0.99):
        got = run(
            page, "smoothing.js", "return m.debiasedEma(arg.v, arg.w);", {"v": values, "w": weight}
        )
        want = tensorboard_smoothing(values, weight)
        assert got[100] is None
        assert [g for g in got if g is not None] == pytest.approx(
            [w for w in want if w is not None]
        )
    assert run(page, "smoothing.js", "return m.debiasedEma([0.5, 0.5, 0.5], 0.9);") == [0.5] * 3


def test_thinning_keeps_a_spike_in_the_band(page: Watched) -> None:
    result = run(
        page,
        "thinning.js",
        """const n = 100000, x = [], y = [];
        for (let i = 0; i < n; i++) { x.push(i + 1); y.push(i === 54321 ? 50 : 0.1); }
        const t = m.thin({x, y}, 2000);
        return {n: t.x.length, hi: Math.max(...t.hi), lo: Math.min(...t.lo), last: t.x.at(-1),
                thinned: t.thinned, small: m.thin({x: [1, 2], y: [3, 4]}, 2000)};""",
    )
    assert result["n"] <= 2000 and result["thinned"] is True
    assert result["hi"] == 50 and result["lo"] == pytest.approx(0.1)
    assert result["last"] == 100000
    assert result["small"] == {
        "x": [1, 2],
        "y": [3, 4],
        "lo": [None, None],
        "hi": [None, None],
        "thinned": False,
    }


def test_config_diff_lists_only_keys_that_differ(page: Watched) -> None:
    rows = run(
        page,
        "configdiff.js",
        "return m.configDiff(arg, (k) => k === 'task_id');",
        [
            {"task_id": "a", "config": {"epochs": 2, "optimizer": {"lr": 1e-4}, "rank": 16}},
            {"task_id": "b", "config": {"epochs": 2, "optimizer": {"lr": 2e-4}}},
        ],
    )
    assert rows == [
        {"key": "config.optimizer.lr", "values": [1e-4, 2e-4]},
        {"key": "config.rank", "values": [16, None]},
    ]


def test_tab_title_shows_progress(page: Watched) -> None:
    titles = run(
        page,
        "title.js",
        "return [m.pageTitle('cats-lora', 42.7), m.pageTitle('cats-lora', null),"
        " m.pageTitle(null, 5)];",
    )
    assert titles == ["[42%] cats-lora · dpd", "cats-lora · dpd", "dpd"]


def test_submit_form_errors_land_on_their_fields(page: Watched) -> None:
    placed = run(
        page,
        "jobform.js",
        """const paths = m.requiredPaths({components: [
             {config_key: 'ckpt_path', path: '/m/wan', installed: true},
             {config_key: 'ckpt_path', path: '/m/wan', installed: true}]});
           const job = m.buildJob({model_type: 'wan', paths: {ckpt_path: '/m/wan'}, dataset: '/d',
             resolution: 512, epochs: 3, lr: 0.001, rank: 8, batch: 1, save_every: 1, queue: true,
             priority: 0, task_id: '', description: ''}, paths);
           return {paths, job, fields: ['config.epochs', 'config.model.ckpt_path',
             'dataset.directories[0].path', 'config.optimizer.lr', 'something.else']
             .map((f) => m.fieldFor(f, paths))};""",
    )
    assert placed["paths"] == [
        {"key": "ckpt_path", "path": "/m/wan", "installed": True, "choices": ["/m/wan"]}
    ]
    assert placed["job"]["config"]["model"] == {"dtype": "bfloat16", "ckpt_path": "/m/wan"}
    assert placed["job"]["config"]["epochs"] == 3 and "task_id" not in placed["job"]
    assert placed["fields"] == ["epochs", "path:ckpt_path", "dataset", "lr", None]


def test_shipped_files_name_no_outside_address() -> None:
    """Nothing the pages load names another origin (the CSP would block it anyway): the only
    addresses are XML namespace names and the link in uPlot's own banner."""
    static = Path(__file__).parents[2] / "dpd" / "web" / "static"
    harmless = re.compile(r"^(http://www\.w3\.org/[\w/.]+|https://github\.com/leeoniya/uPlot)$")
    for path in static.rglob("*"):
        if path.suffix in (".html", ".js", ".mjs", ".css", ".svg") and path.is_file():
            for address in re.findall(r"https?://[^\s\"'`)<>]+", path.read_text()):
                assert harmless.match(address), f"{path}: {address}"


def test_the_editors_yaml_reads_back_equal_with_dpds_loader(page: Watched) -> None:
    from dpd.jobs.yamlload import load_yaml

    doc = {
        "model_type": "sdxl",
        "description": "cats: the # second try",
        "task_id": "yes",
        "gpu_ids": None,
        "queue": True,
        "priority": 0,
        "lr": 5e-5,
        "big": 1e21,
        "negative": -2.5,
        "empty_list": [],
        "empty_map": {},
        "nested": [[1, 2], {"a": [{"b": "on"}, "off"]}, []],
        "texts": [
            "/data/x y",
            "0755",
            "1e5",
            "12:30",
            "2026-01-02",
            "-dash",
            "@at",
            "'q",
            '"dq',
            "✓ ünïcode",
            "two\nlines",
            "",
            " lead",
            "trail ",
            "~",
            "null",
            "a #b",
            "[x]",
        ],
        "weird key": 1,
        "<<": 2,
        "true": 3,
        "1": 4,
    }
    text = run(page, "jobyaml.js", "return m.toYaml(arg);", doc)
    assert load_yaml(text) == doc, text
    assert "\nmodel_type: sdxl\n" in "\n" + text  # plain where that reads back the same
    assert run(page, "jobyaml.js", "return m.toYaml(arg);", {}) == "{}\n"


def test_the_editor_finds_the_line_of_a_field_and_the_format(page: Watched) -> None:
    yaml_text = (
        "model_type: sdxl\n"  # 1
        "dataset:\n"  # 2
        "  directories:\n"  # 3
        "    - path: /d\n"  # 4
        "config:\n"  # 5
        "  model: {dtype: bfloat16}\n"  # 6
        "  epochs: 0\n"  # 7
        "  optimizer:\n"  # 8
        "    type: adamw\n"  # 9
        "    lr: x\n"  # 10
    )
    json_text = '{\n  "config": {\n    "epochs": 1,\n    "optimizer": {"lr": "x"}\n  }\n}'
    found = run(
        page,
        "jobyaml.js",
        """return [
             ...['config.epochs', 'dataset.directories[0].path', 'config.optimizer.lr',
                 'config.adapter', 'nothing', 'model_type']
               .map((f) => m.fieldLine(arg.y, f)),
             m.fieldLine(arg.j, 'config.optimizer.lr'), m.fieldLine(arg.j, 'config.epochs'),
             m.documentFormat(arg.j), m.documentFormat('  {"a": 1}'), m.documentFormat(arg.y),
             m.documentFormat(''), m.lineRange(arg.y, 7)];""",
        {"y": yaml_text, "j": json_text},
    )
    assert found[:6] == [7, 4, 10, 5, None, 1]
    assert found[6:8] == [4, 3]
    assert found[8:12] == ["json", "json", "yaml", "yaml"]
    start, end = found[12]
    assert yaml_text[start:end] == "  epochs: 0"
