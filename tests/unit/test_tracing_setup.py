"""Which tracer provider the OTEL_* environment variables give `poller run` (no network)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider

from poller.observability.tracing import tracer_provider_from_env

OTEL_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def span_of(provider: TracerProvider | None) -> tuple[bool, bool]:
    """(recording, has a valid id) of a span that the provider starts. The span is not ended, so
    that no exporter tries to send it anywhere."""
    assert isinstance(provider, TracerProvider)
    span = provider.get_tracer("test").start_span("batch")
    return span.is_recording(), span.get_span_context().is_valid


def test_without_an_exporter_spans_have_ids_but_are_not_recorded() -> None:
    provider = tracer_provider_from_env()
    recording, valid = span_of(provider)
    assert valid  # the trace id still goes into logs and failure records
    assert not recording


def test_an_endpoint_records_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    provider = tracer_provider_from_env()
    try:
        assert span_of(provider) == (True, True)
    finally:
        assert provider is not None
        provider.shutdown()  # type: ignore[attr-defined]


def test_a_sampler_set_by_the_user_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    assert span_of(tracer_provider_from_env()) == (True, True)


def test_sdk_disabled_means_no_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracer_provider_from_env() is None
