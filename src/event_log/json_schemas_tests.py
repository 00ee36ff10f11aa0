"""Schema governance: docs/events/*.json follow the code, and an event's fields do not
change under a metadata_version whose schema is committed."""

import json
from typing import Annotated

import pytest
from django.core.management import CommandError, call_command

from core.env import REPO_ROOT
from event_log.events import Event, Personal
from event_log.json_schemas import (
    SCHEMA_FOLDER,
    UnversionedChangeError,
    check_schemas,
    json_schema,
    write_schemas,
)
from users.events import UserCreated


def parcel_shipped_v1() -> type[Event]:
    class ParcelShipped(Event):
        """A parcel left the warehouse."""

        subject = ("user", "user_id")
        user_id: int
        address: Annotated[str, Personal]

    return ParcelShipped


def parcel_shipped_with_a_new_field(version: int) -> type[Event]:
    class ParcelShipped(Event):
        """A parcel left the warehouse."""

        metadata_version = version
        subject = ("user", "user_id")
        user_id: int
        address: Annotated[str, Personal]
        weight_grams: int

    return ParcelShipped


def test_the_committed_schemas_are_the_ones_the_code_generates():
    assert check_schemas(REPO_ROOT / SCHEMA_FOLDER) == [], (
        "run: manage.py event_log_catalogue --write"
    )


def test_a_schema_carries_the_personal_flags_subject_type_and_version():
    schema = json.loads((REPO_ROOT / SCHEMA_FOLDER / "user_created.v1.json").read_text())
    assert schema == json_schema(UserCreated)
    assert schema["x-event-type"] == "user_created"
    assert schema["x-metadata-version"] == 1
    assert schema["x-subject"] == {"kind": "user", "field": "user_id"}
    personal = {name for name, prop in schema["properties"].items() if prop["x-personal"]}
    assert personal == {"email", "first_name", "last_name"}
    assert schema["properties"]["user_id"]["type"] == "integer"


def test_a_new_event_type_is_missing_until_written_then_passes(tmp_path):
    shipped = parcel_shipped_v1()
    assert check_schemas(tmp_path, [shipped]) == [
        "parcel_shipped.v1.json is missing: run manage.py event_log_catalogue --write"
    ]
    assert write_schemas(tmp_path, [shipped]) == ["parcel_shipped.v1.json"]
    assert check_schemas(tmp_path, [shipped]) == []


def test_changed_fields_without_a_version_bump_fail_the_check_and_are_not_written(tmp_path):
    write_schemas(tmp_path, [parcel_shipped_v1()])
    committed = (tmp_path / "parcel_shipped.v1.json").read_text()
    changed = parcel_shipped_with_a_new_field(version=1)

    problems = check_schemas(tmp_path, [changed])
    assert len(problems) == 1
    assert problems[0].startswith("parcel_shipped.v1.json: the fields of ParcelShipped changed")
    assert "bump metadata_version to 2" in problems[0]
    with pytest.raises(UnversionedChangeError, match="bump metadata_version to 2"):
        write_schemas(tmp_path, [changed])
    assert (tmp_path / "parcel_shipped.v1.json").read_text() == committed
    assert sorted(path.name for path in tmp_path.iterdir()) == ["parcel_shipped.v1.json"]


def test_a_bumped_version_writes_a_new_file_keeps_the_old_one_and_passes(tmp_path):
    write_schemas(tmp_path, [parcel_shipped_v1()])
    committed = (tmp_path / "parcel_shipped.v1.json").read_text()
    bumped = parcel_shipped_with_a_new_field(version=2)

    assert check_schemas(tmp_path, [bumped]) == [
        "parcel_shipped.v2.json is missing: run manage.py event_log_catalogue --write"
    ]
    assert write_schemas(tmp_path, [bumped]) == ["parcel_shipped.v2.json"]
    assert check_schemas(tmp_path, [bumped]) == []
    assert (tmp_path / "parcel_shipped.v1.json").read_text() == committed
    v2 = json.loads((tmp_path / "parcel_shipped.v2.json").read_text())
    assert v2["x-metadata-version"] == 2
    assert "weight_grams" in v2["properties"]


def test_a_changed_personal_flag_or_docstring_is_stale_not_a_version_change(tmp_path):
    write_schemas(tmp_path, [parcel_shipped_v1()])

    class ParcelShipped(Event):
        """A parcel left the warehouse for the carrier."""

        subject = ("user", "user_id")
        user_id: int
        address: str

    assert check_schemas(tmp_path, [ParcelShipped]) == [
        "parcel_shipped.v1.json is stale: run manage.py event_log_catalogue --write"
    ]
    assert write_schemas(tmp_path, [ParcelShipped]) == ["parcel_shipped.v1.json"]
    assert check_schemas(tmp_path, [ParcelShipped]) == []


def test_a_field_named_title_is_a_field_not_an_annotation(tmp_path):
    class Titled(Event):
        title: str

    write_schemas(tmp_path, [Titled])

    class Titled(Event):  # type: ignore[no-redef]
        name: str

    assert "bump metadata_version" in check_schemas(tmp_path, [Titled])[0]


def test_a_file_no_class_declares_fails_the_check(tmp_path):
    shipped = parcel_shipped_v1()
    write_schemas(tmp_path, [shipped])
    (tmp_path / "parcel_shipped.v3.json").write_text("{}\n")
    (tmp_path / "parcel_returned.v1.json").write_text("{}\n")

    problems = check_schemas(tmp_path, [shipped])
    assert [problem.split(":")[0] for problem in problems] == [
        "parcel_returned.v1.json",
        "parcel_shipped.v3.json",
    ]


def test_the_command_check_fails_on_a_stale_folder(tmp_path, settings):
    settings.REPO_ROOT = tmp_path
    (tmp_path / "docs").mkdir()
    with pytest.raises(CommandError, match=r"user_created\.v1\.json is missing"):
        call_command("event_log_catalogue", "--check")
    call_command("event_log_catalogue", "--write")
    call_command("event_log_catalogue", "--check")
    assert (tmp_path / SCHEMA_FOLDER / "user_created.v1.json").read_text() == (
        REPO_ROOT / SCHEMA_FOLDER / "user_created.v1.json"
    ).read_text()
