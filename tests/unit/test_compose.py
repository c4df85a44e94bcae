"""docker-compose.yml, the connector configs in connect/ and docs/quota-integration.md agree.

There is no Docker engine here to run the compose file, so it is parsed and held against what the
docs promise, what the code accepts (settings, CLI commands) and what the migration creates.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from inbox.commands import build_parser
from inbox.formats import SINK_COLUMNS
from inbox.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCS = (ROOT / "docs" / "quota-integration.md").read_text(encoding="utf-8")
COMPOSE_DOCS = DOCS[DOCS.index("## docker-compose") :]
SINK_MIGRATION = (ROOT / "sql" / "migrations" / "010_baseline.sql").read_text(encoding="utf-8")
ONE_SHOT = "(one-shot)"


def docs_rows() -> dict[str, list[str]]:
    """The docs' service table: {service: [image, what it does, healthcheck]}."""
    rows = {}
    for line in COMPOSE_DOCS.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`([a-z-]+)`", cells[0]) if len(cells) == 4 else None
        if name:
            rows[name.group(1)] = cells[1:]
    return rows


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def topics_created() -> set[str]:
    command = " ".join(SERVICES["kafka-topics"]["command"])
    return set(re.findall(r"([a-z][a-z.-]+):\d+", command))


def connector(file_name: str) -> dict[str, str]:
    config: dict[str, str] = json.loads((ROOT / "connect" / file_name).read_text(encoding="utf-8"))
    return config


def sink_table_columns() -> list[str]:
    body = SINK_MIGRATION[SINK_MIGRATION.index("CREATE TABLE inbox.titan_quota_sink") :]
    body = body[: body.index(");")]
    created = [c for c in re.findall(r"^\s{4}(\w+)\s+\w+", body, re.MULTILINE) if c != "PRIMARY"]
    added = [
        column
        for path in sorted((ROOT / "sql" / "migrations").glob("*.sql"))
        for column in re.findall(
            r"ALTER TABLE inbox\.titan_quota_sink ADD COLUMN (\w+)", path.read_text(encoding="utf-8")
        )
    ]
    return created + added


def test_every_service_the_docs_list_is_in_the_compose_file_and_back() -> None:
    assert set(docs_rows()) == set(SERVICES)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_each_service_runs_the_image_the_docs_name(name: str) -> None:
    image_cell = docs_rows()[name][0]
    assert re.match(r"`([^`]+)`", image_cell)
    assert SERVICES[name]["image"] == re.match(r"`([^`]+)`", image_cell).group(1)  # type: ignore[union-attr]
    built = "built from `Dockerfile`" in image_cell
    assert ("build" in SERVICES[name]) == built
    if built:
        assert SERVICES[name]["build"] == "."
        assert (ROOT / "Dockerfile").is_file()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart_forever(name: str) -> None:
    service = SERVICES[name]
    if docs_rows()[name][2] == ONE_SHOT:
        assert "healthcheck" not in service
        assert service.get("restart") in ("no", "on-failure")
    else:
        assert service["healthcheck"]["test"]
        assert service.get("restart", "unless-stopped") != "no"


def test_dependencies_exist_and_wait_for_the_right_condition() -> None:
    for name, service in SERVICES.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in SERVICES, (name, dependency)
            one_shot = docs_rows()[dependency][2] == ONE_SHOT
            expected = "service_completed_successfully" if one_shot else "service_healthy"
            assert rule["condition"] == expected, (name, dependency)


def test_inbox_services_run_real_commands_with_real_settings() -> None:
    parser = build_parser()
    fields = {f"INBOX_{name.upper()}" for name in Settings.model_fields}
    inbox_services = [name for name, service in SERVICES.items() if "build" in service]
    assert sorted(inbox_services) == ["consume", "migrate", "serve", "work"]
    for name in inbox_services:
        command = SERVICES[name]["command"]
        assert command[0] == "inbox"
        assert parser.parse_args(command[1:]).command == name
        env = environment(SERVICES[name])
        assert "INBOX_DATABASE_URL" in env
        assert set(env) <= fields, set(env) - fields


def test_every_variable_the_docs_mention_is_set_as_they_say() -> None:
    everywhere = {k: v for service in SERVICES.values() for k, v in environment(service).items()}
    for variable in set(re.findall(r"`(INBOX_[A-Z_]+)", COMPOSE_DOCS)):
        assert variable in everywhere, variable
    for name, cells in docs_rows().items():
        for variable, value in re.findall(r"`(INBOX_[A-Z_]+)=([^`]+)`", " ".join(cells)):
            assert environment(SERVICES[name]).get(variable) == value, (name, variable)


def test_the_consumer_reads_a_topic_the_compose_file_creates() -> None:
    assert environment(SERVICES["consume"])["INBOX_KAFKA_TOPIC"] in topics_created()
    assert environment(SERVICES["consume"])["INBOX_KAFKA_BOOTSTRAP"] == "kafka:9092"
    alive = environment(SERVICES["consume"])["INBOX_KAFKA_ALIVE_FILE"]
    assert alive in " ".join(SERVICES["consume"]["healthcheck"]["test"])


def test_the_sink_is_put_from_its_file_under_its_own_name() -> None:
    command = SERVICES["connect-sink"]["command"]
    (data,) = [arg for arg in command if arg.startswith("@/connect/")]
    (url,) = [arg for arg in command if arg.startswith("http://connect:8083/connectors/")]
    config = connector(data.removeprefix("@/connect/"))
    assert url == f"http://connect:8083/connectors/{config['name']}/config"
    assert config["connector.class"] == "io.debezium.connector.jdbc.JdbcSinkConnector"
    assert "./connect:/connect:ro" in SERVICES["connect-sink"]["volumes"]
    for secret in re.findall(r"\$\{env:(\w+)\}", json.dumps(config)):
        assert secret in environment(SERVICES["connect"])


@pytest.mark.parametrize(
    ("file_name", "table_key", "keys_key"),
    [
        ("debezium-jdbc-sink.json", "collection.name.format", "primary.key.fields"),
        ("confluent-jdbc-sink.json", "table.name.format", "pk.fields"),
    ],
)
def test_sink_configs_match_the_sink_table(file_name: str, table_key: str, keys_key: str) -> None:
    config = connector(file_name)
    assert config[table_key] == "inbox.titan_quota_sink"
    assert config[keys_key] == "quota_id,version"
    assert "PRIMARY KEY (quota_id, version)" in SINK_MIGRATION
    assert config["delete.enabled"] == "false"  # deletes must arrive as rows, to reach the inbox
    assert config["transforms.unwrap.type"] == "io.debezium.transforms.ExtractNewRecordState"
    assert config["transforms.unwrap.delete.tombstone.handling.mode"] == "rewrite"
    # ExtractNewRecordState names an added field "__" + its path with "_" for ".": __source_ts_ms
    added = {f"__{field.replace('.', '_')}" for field in config["transforms.unwrap.add.fields"].split(",")}
    assert added | {"__deleted"} <= set(sink_table_columns())
    assert config["topics"] in topics_created()
    assert config["errors.deadletterqueue.topic.name"] in topics_created()


def test_the_sink_table_has_the_flattened_quota_row() -> None:
    assert sink_table_columns() == list(SINK_COLUMNS)


# -- exposure (issue 12, M9) ----------------------------------------------------------------------

LOGINS_SQL = (ROOT / "deploy" / "compose" / "logins.sql").read_text(encoding="utf-8")
ROLES_MIGRATION = (ROOT / "sql" / "migrations" / "010_baseline.sql").read_text(encoding="utf-8")
OWNER = COMPOSE["services"]["postgres"]["environment"]["POSTGRES_USER"]


def granted(login: str) -> set[str]:
    """The roles deploy/compose/logins.sql grants to login."""
    roles = set()
    for role, logins in re.findall(r"^GRANT (\w+)\s+TO ([\w, ]+);", LOGINS_SQL, re.MULTILINE):
        if login in {name.strip() for name in logins.split(",")}:
            roles.add(role)
    return roles


def login_of(service: str) -> str:
    url = environment(SERVICES[service])["INBOX_DATABASE_URL"]
    match = re.match(r"postgresql://(\w+):", url)
    assert match, url
    return match.group(1)


def test_every_published_port_is_bound_to_loopback() -> None:
    published = {name: service["ports"] for name, service in SERVICES.items() if service.get("ports")}
    assert set(published) == {"postgres", "serve"}
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_kafka_plaintext_and_the_connect_rest_api_stay_on_the_compose_network() -> None:
    kafka = environment(SERVICES["kafka"])
    assert "ports" not in SERVICES["kafka"]
    assert "ports" not in SERVICES["connect"]
    assert "localhost" not in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == "INTERNAL://kafka:9092"


def test_no_secret_has_a_default_and_no_placeholder_passes() -> None:
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    for secret in ("POSTGRES_PASSWORD", "INBOX_API_TOKEN", "SINK_DB_PASSWORD", "WEBHOOK_DB_PASSWORD"):
        uses = re.findall(r"\$\{" + secret + r"(:?[-?=+]?)", text)
        assert uses, secret
        assert set(uses) == {":?"}, (secret, uses)  # required, never a default
    for name, service in SERVICES.items():
        for variable, value in environment(service).items():
            if re.search(r"PASSWORD|TOKEN|SECRET", variable) and variable != "SINK_DATABASE_USER":
                assert value.startswith("${") and ":?" in value, (name, variable)
            if variable == "INBOX_DATABASE_URL":
                assert re.match(r"postgresql://\w+:\$\{\w+:\?[^}]*\}@postgres:5432/csla$", value), value
    assert "change-me" not in text
    with pytest.raises(ValueError, match="placeholder"):
        Settings(api_token="change-me-before-exposing")  # the value this file used to default to


def test_each_process_logs_in_as_its_own_login_with_the_roles_of_migration_007() -> None:
    for role in ("inbox_ingest", "inbox_worker", "inbox_readonly"):
        assert f"CREATE ROLE {role} NOLOGIN" in ROLES_MIGRATION
    assert login_of("migrate") == OWNER
    assert granted(login_of("serve")) == {"inbox_ingest", "inbox_readonly"}
    assert granted(login_of("consume")) == {"inbox_ingest"}
    assert granted(login_of("work")) == {"inbox_worker", "inbox_readonly"}
    assert environment(SERVICES["connect"])["SINK_DATABASE_USER"] == "quota_sink"
    assert granted("quota_sink") == {"inbox_ingest"}
    logins = {login_of(name) for name in ("serve", "consume", "work")} | {"quota_sink"}
    assert OWNER not in logins and len(logins) == 4  # one login per process, none the owner
    # the logins exist before any process that uses them starts
    for name in ("serve", "work", "consume", "connect-sink"):
        assert SERVICES[name]["depends_on"]["logins"]["condition"] == "service_completed_successfully"
    assert "./deploy/compose/logins.sql:/logins.sql:ro" in SERVICES["logins"]["volumes"]
