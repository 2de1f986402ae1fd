"""A short batch job instrumented with the OpenTelemetry Python SDK, exporting to
dropgate's OTLP/HTTP route. Used by tests/tests/otlp_sdk.rs.

usage: otlp_job.py ENDPOINT MODE
  MODE protobuf: the SDK's own OTLP/HTTP exporter (protobuf), cumulative, one export
  MODE json:     the same data, encoded by the SDK's encoder and written as OTLP/JSON by
                 protobuf's json_format (integers for enums, as OTLP/JSON requires)
  MODE delta:    the exporter with delta temporality; four exports of a counter
                 incremented by 1, 2, 3 and 4
"""
import sys
import urllib.request

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import (Counter, Histogram, MeterProvider,
                                       ObservableCounter, UpDownCounter)
from opentelemetry.sdk.metrics.export import (AggregationTemporality,
                                              InMemoryMetricReader,
                                              PeriodicExportingMetricReader)
from opentelemetry.sdk.metrics.view import (ExponentialBucketHistogramAggregation,
                                            View)
from opentelemetry.sdk.resources import Resource

endpoint, mode = sys.argv[1], sys.argv[2]
service = {"protobuf": "report-pb", "json": "report-json", "delta": "report-delta"}[mode]
resource = Resource.create({
    "service.name": service,
    "service.namespace": "nightly",
    "service.instance.id": "runner-7",
    "deployment.environment": "e2e",
})
views = [View(instrument_name="payload.size",
              aggregation=ExponentialBucketHistogramAggregation(max_size=160))]


def record(meter, step=None):
    jobs = meter.create_counter("jobs.processed", unit="{job}", description="Jobs done.")
    if step is not None:
        jobs.add(step, {"kind": "pdf"})
        return
    jobs.add(5, {"kind": "pdf"})
    jobs.add(2, {"kind": "csv"})
    queue = meter.create_up_down_counter("queue.items", description="Items queued.")
    queue.add(5)
    queue.add(-2)
    temperature = meter.create_gauge("room.temperature", unit="Cel")
    temperature.set(21.5, {"room": "a-1"})
    duration = meter.create_histogram("task.duration", unit="s")
    for seconds in (0.004, 0.2, 3.0):
        duration.record(seconds)
    size = meter.create_histogram("payload.size", unit="By")
    for size_bytes in (100, 200, 300, 5000):
        size.record(size_bytes)


if mode == "protobuf":
    exporter = OTLPMetricExporter(endpoint=endpoint)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=resource, metric_readers=[reader], views=views)
    record(provider.get_meter("nightly", "1.0"))
    provider.force_flush()
    provider.shutdown()
elif mode == "json":
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=resource, metric_readers=[reader], views=views)
    record(provider.get_meter("nightly", "1.0"))
    message = encode_metrics(reader.get_metrics_data())
    body = json_format.MessageToJson(message, use_integers_for_enums=True).encode()
    request = urllib.request.Request(endpoint, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200, answer.status
    provider.shutdown()
elif mode == "delta":
    delta = {Counter: AggregationTemporality.DELTA,
             ObservableCounter: AggregationTemporality.DELTA,
             Histogram: AggregationTemporality.DELTA,
             UpDownCounter: AggregationTemporality.CUMULATIVE}
    exporter = OTLPMetricExporter(endpoint=endpoint, preferred_temporality=delta)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter("nightly", "1.0")
    for step in (1, 2, 3, 4):
        record(meter, step)
        # force_flush returns False when the export failed.
        assert provider.force_flush(), "export failed"
    provider.shutdown()
