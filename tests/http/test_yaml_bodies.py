"""POST /training/start and /training/validate take the job document as YAML too
(Content-Type application/yaml, application/x-yaml or text/yaml), read with dpd's one YAML
loader: YAML 1.2 numbers, alias bombs refused; JSON stays the default."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.http.conftest import Api

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")


def yaml_job(api: Api, lr: str = "5e-5", **overrides: Any) -> str:
    """The test job as YAML, its learning rate written as ``lr`` (plain, as people write it)."""
    doc = api.job(**overrides)
    doc["config"]["optimizer"]["lr"] = 0.123456
    text = yaml.safe_dump(doc, sort_keys=False)
    assert "lr: 0.123456" in text
    return text.replace("lr: 0.123456", f"lr: {lr}")


async def post_yaml(api: Api, path: str, text: str, content_type: str = "application/yaml"):
    return await api.post(path, data=text.encode(), headers={"Content-Type": content_type})


@pytest.mark.parametrize("content_type", [*YAML_TYPES, "application/yaml; charset=utf-8"])
async def test_validate_reads_yaml_with_scientific_notation_as_numbers(
    api: Api, content_type: str
) -> None:
    reply = await post_yaml(api, "/api/v1/training/validate", yaml_job(api), content_type)
    assert reply.status == 200, reply.body
    # YAML 1.1 (PyYAML's own rules) would read 5e-5 as the string '5e-5': a 422
    assert "lr = 5e-05" in reply.body["data"]["config_toml"]


async def test_start_takes_yaml_and_stores_the_numbers_as_numbers(api: Api) -> None:
    text = yaml_job(api, lr="1E-4", task_id="yaml-task")
    reply = await post_yaml(api, "/api/v1/training/start", text)
    assert reply.status == 201, reply.body
    assert reply.body["data"]["task_id"] == "yaml-task"
    config = await api.get("/api/v1/training/yaml-task/config")
    spec = config.body["data"]["job"]
    assert spec["config"]["optimizer"]["lr"] == pytest.approx(1e-4)
    assert isinstance(spec["config"]["optimizer"]["lr"], float)
    assert spec["config"]["epochs"] == 2
    # the same document again: the existing task, not a second training
    again = await post_yaml(api, "/api/v1/training/start", text, "text/yaml")
    assert again.status == 200 and again.body["data"]["task_id"] == "yaml-task"


async def test_yaml_field_errors_are_the_same_422_as_json(api: Api) -> None:
    text = yaml_job(api, task_id="bad-yaml").replace("epochs: 2", "epochs: 0")
    for path in ("/api/v1/training/validate", "/api/v1/training/start"):
        reply = await post_yaml(api, path, text)
        assert reply.status == 422, reply.body
        fields = [e["field"] for e in reply.body["data"]["errors"]]
        assert "config.epochs" in fields
    assert not api.daemon.services.store.exists("bad-yaml")


@pytest.mark.parametrize(
    "text",
    [
        "model_type: [sdxl\nconfig: {",  # unclosed flow sequence
        "model_type: sdxl\n  config: 1\n\tbad: indentation\n",
        "- a list\n- not a mapping\n",
        "when: !!python/object/apply:os.system ['true']\n",
    ],
)
async def test_invalid_yaml_is_a_400_envelope_and_starts_nothing(api: Api, text: str) -> None:
    for path in ("/api/v1/training/validate", "/api/v1/training/start"):
        reply = await post_yaml(api, path, text)
        assert reply.status == 400, reply.text
        assert reply.body["code"] == 400 and reply.body["message"]
    assert api.daemon.services.store.states() == []


async def test_an_alias_bomb_is_refused_before_it_expands(api: Api) -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level in range(1, 9):  # 10**9 nodes once expanded, 9 lines as written
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    reply = await post_yaml(api, "/api/v1/training/start", "\n".join(lines) + "\n")
    assert reply.status == 400, reply.text
    assert "refused" in reply.body["message"]
    assert api.daemon.services.store.states() == []


async def test_a_yaml_body_over_the_size_limit_is_a_413(api: Api) -> None:
    text = yaml_job(api) + "# " + "x" * (70 * 1024) + "\n"  # max_body_kb is 64 here
    reply = await post_yaml(api, "/api/v1/training/validate", text)
    assert reply.status == 413, reply.text
    assert reply.body["code"] == 413


async def test_json_stays_the_default_for_other_content_types(api: Api) -> None:
    text = yaml_job(api)
    for content_type in ("application/json", "text/plain"):
        reply = await post_yaml(api, "/api/v1/training/validate", text, content_type)
        assert reply.status == 400, reply.text
        assert "not valid JSON" in reply.body["message"]
    reply = await api.post("/api/v1/training/validate", json=api.job())
    assert reply.status == 200, reply.body
