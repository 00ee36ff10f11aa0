import pytest

from event_log.events import Event, snake_case


class UserCreated(Event):
    user_id: int


class HTTPRequestFailed(Event):
    metadata_version = 3
    url: str


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("UserCreated", "user_created"),
        ("HTTPRequestFailed", "http_request_failed"),
        ("OAuth2TokenIssued", "o_auth2_token_issued"),
        ("PDFExported", "pdf_exported"),
        ("Simple", "simple"),
        ("UserIDChanged", "user_id_changed"),
    ],
)
def test_snake_case_handles_words_and_acronyms(name, expected):
    assert snake_case(name) == expected


def test_event_type_is_the_snake_case_class_name():
    assert UserCreated.event_type == "user_created"
    assert HTTPRequestFailed.event_type == "http_request_failed"
    assert UserCreated(user_id=1).event_type == "user_created"


def test_metadata_version_defaults_to_1_and_is_declared_per_class():
    assert UserCreated.metadata_version == 1
    assert HTTPRequestFailed.metadata_version == 3


def test_metadata_version_must_be_a_positive_int():
    with pytest.raises(TypeError, match="metadata_version"):

        class Broken(Event):
            metadata_version = 0


def test_events_are_immutable_and_reject_unknown_fields():
    event = UserCreated(user_id=1)
    with pytest.raises(ValueError, match="frozen"):
        event.user_id = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="extra"):
        UserCreated(user_id=1, surprise=True)  # type: ignore[call-arg]
