"""``dpd fleet doctor``: what the NATS deployment and the fleet's buckets look like, and
whether anything would make fleet mode unsafe (FLEET.md §3.6, §6, §11).

Read-only: it creates nothing (a missing bucket is reported; the first fleet daemon creates
it). Unsafe, and so a non-zero exit: a server below 2.11 or without JetStream; a monitored
server without ``sync_interval: always``; a fleet bucket with fewer replicas than
``fleet.replicas`` or without a leader. Unknowns (no monitoring URL) are warnings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from dpd.config import Config
from dpd.fleet.kv import Bucket, BucketSpec, alive_spec, config_differences, jobs_spec, nodes_spec
from dpd.fleet.records import NodeRecord, RecordError
from dpd.fleet.registry import alive_read
from dpd.fleet.startup import (
    ServerFacts,
    connect_once,
    connected_facts,
    monitor_urls,
    monitored_facts,
    problems,
)


@dataclass
class Report:
    servers: list[dict[str, Any]] = field(default_factory=list)
    buckets: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "safe": self.safe,
            "servers": self.servers,
            "buckets": self.buckets,
            "nodes": self.nodes,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def server_row(facts: ServerFacts) -> dict[str, Any]:
    return {
        "where": facts.where,
        "name": facts.name,
        "version": facts.version,
        "jetstream": facts.jetstream,
        "sync_always": facts.sync_always,
        "cluster": facts.cluster,
        "api_level": facts.api_level,
        "answered": facts.answered,
    }


async def examine(config: Config, timeout: float = 10.0) -> Report:
    """Everything the doctor prints; raises ``NatsUnreachable`` when no server answers."""
    report = Report()
    nc = await connect_once(config.nats, f"{config.daemon.node}-fleet-doctor", timeout)
    try:
        facts = [await connected_facts(nc)]
        facts += await monitored_facts(monitor_urls(config.fleet.monitor_url))
        report.servers = [server_row(f) for f in facts]
        report.problems += problems([f for f in facts if f.answered], require_sync_always=True)
        report.warnings += [
            f"NATS monitoring at {f.where} did not answer" for f in facts if not f.answered
        ]
        if not config.fleet.monitor_url:
            report.warnings.append(
                "fleet.monitor_url is not set: sync_interval cannot be checked on the servers"
            )
        if facts[0].jetstream:
            await examine_buckets(nc, config, report)
    finally:
        await nc.close()
    return report


def specs(config: Config) -> list[BucketSpec]:
    prefix, replicas = config.nats.subject_prefix, config.fleet.replicas
    return [
        jobs_spec(prefix, replicas),
        nodes_spec(prefix, replicas),
        alive_spec(prefix, replicas, config.fleet.node_ttl),
    ]


async def examine_buckets(nc: NATS, config: Config, report: Report) -> None:
    js = nc.jetstream(timeout=5)
    found: dict[str, Bucket] = {}
    for spec in specs(config):
        row = await bucket_row(js, spec, report)
        report.buckets.append(row)
        if row["exists"]:
            found[spec.bucket] = Bucket(js, spec)
    _, nodes, alive = (found.get(s.bucket) for s in specs(config))
    if nodes is not None:
        report.nodes = await node_rows(js, nodes, alive)


async def bucket_row(js: JetStreamContext, spec: BucketSpec, report: Report) -> dict[str, Any]:
    try:
        info = await js.stream_info(spec.stream)
    except nats.js.errors.NotFoundError:
        report.warnings.append(f"bucket {spec.bucket} does not exist yet")
        return {"bucket": spec.bucket, "exists": False}
    cluster = info.cluster
    replicas = int(info.config.num_replicas or 1)
    peers = (
        [{"name": p.name, "current": p.current, "lag": p.lag} for p in cluster.replicas or []]
        if cluster
        else []
    )
    leader = cluster.leader if cluster else None
    if replicas < spec.replicas:
        report.problems.append(
            f"bucket {spec.bucket} has {replicas} replica(s); fleet.replicas is {spec.replicas}"
        )
    if cluster is not None and not leader:
        report.problems.append(f"bucket {spec.bucket} has no leader")
    for difference in config_differences(spec.stream_config(), info.config):
        report.warnings.append(f"bucket {spec.bucket}: {difference}")
    return {
        "bucket": spec.bucket,
        "exists": True,
        "replicas": replicas,
        "leader": leader,
        "peers": peers,
        "messages": info.state.messages,
        "max_age": info.config.max_age,
    }


async def node_rows(
    js: JetStreamContext, nodes: Bucket, alive: Bucket | None
) -> list[dict[str, Any]]:
    # the stream leader's list of subjects, not nats-py's ``keys()``: that listing can end
    # before a just-acknowledged write is in it (its end comes from a pending count)
    info = await js.stream_info(nodes.stream, subjects_filter=f"{nodes.prefix}>")
    keys = [subject[len(nodes.prefix) :] for subject in info.state.subjects or {}]
    rows: list[dict[str, Any]] = []
    for key in sorted(keys):
        entry = await nodes.leader_get(key)
        if entry is None or not entry.present:
            continue
        try:
            record = NodeRecord.from_json(entry.value)
        except RecordError as err:
            rows.append({"node": key, "error": str(err)})
            continue
        read = alive_read(await alive.leader_get(key)) if alive is not None else None
        rows.append(
            {
                "node": record.node,
                "url": record.url,
                "gpus": len(record.gpus),
                "filesystem_domain": record.filesystem_domain,
                "machine_id": record.machine_id,
                "alive": bool(read and read.present),
                "rebooted": bool(read and read.present and read.boot_id != record.boot_id),
                "draining": record.draining,
                "down": record.down,
                "version": record.version,
            }
        )
    return rows


def render(report: Report) -> list[str]:
    """The report as lines for a terminal."""
    lines = ["NATS servers:"]
    for s in report.servers:
        if not s["answered"]:
            lines.append(f"  {s['where']}: monitoring did not answer")
            continue
        sync = {True: "always", False: "NOT always", None: "unknown"}[s["sync_always"]]
        lines.append(
            f"  {s['where']}: {s['name'] or '?'} v{s['version']}, jetstream "
            f"{'on' if s['jetstream'] else 'OFF'}, sync {sync}, cluster {s['cluster'] or '-'}"
            + (f", api level {s['api_level']}" if s["api_level"] is not None else "")
        )
    lines.append("Buckets:")
    for b in report.buckets:
        if not b["exists"]:
            lines.append(f"  {b['bucket']}: absent")
            continue
        peers = ", ".join(f"{p['name']}{'' if p['current'] else ' (behind)'}" for p in b["peers"])
        lines.append(
            f"  {b['bucket']}: R{b['replicas']}, leader {b['leader'] or '-'}"
            + (f", followers {peers}" if peers else "")
            + f", {b['messages']} messages"
        )
    lines.append("Nodes:" if report.nodes else "Nodes: none registered")
    for n in report.nodes:
        if "error" in n:
            lines.append(f"  {n['node']}: unreadable record ({n['error']})")
            continue
        state = "alive" if n["alive"] else "gone"
        flags = [f for f in ("draining", "rebooted") if n[f]] + (["down"] if n["down"] else [])
        lines.append(
            f"  {n['node']}: {state}, {n['gpus']} GPU(s), domain {n['filesystem_domain'] or '-'}"
            + (f" [{', '.join(flags)}]" if flags else "")
        )
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"UNSAFE: {p}" for p in report.problems]
    lines.append("fleet mode: safe" if report.safe else "fleet mode: UNSAFE")
    return lines
