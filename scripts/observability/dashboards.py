#!/usr/bin/env python3
"""CheXVision's Grafana dashboards as code (grafana-foundation-sdk).

    python3 scripts/observability/dashboards.py [OUT_DIR]

writes model-quality.json, inference.json and pipeline.json into OUT_DIR
(default: helm/chexvision/dashboards, the committed copies that the chart
ships and that Grafana → Dashboards → Import takes as they are).

Conventions every query here keeps (scripts/observability_check.sh and the
end-to-end test hold them to it):
- one `${datasource}` variable of type prometheus; every panel, target and
  annotation uses it, so a hand import works in any Grafana;
- template variables are matched with `=~` only, and their "All" is `.*`;
- rate windows are `$__rate_interval`;
- every panel query returns a series once the services have run a short
  flow: an error series that only exists after a failure is written as
  `errors or total * 0`, never as a bare filter;
- no `job` matchers: scrape jobs are named by whoever deploys.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as pb
from grafana_foundation_sdk.builders import stat as statb
from grafana_foundation_sdk.builders import table as tableb
from grafana_foundation_sdk.builders import timeseries as tsb
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "helm" / "chexvision" / "dashboards"

FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
    "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema",
    "Fibrosis", "Pleural_Thickening", "Hernia",
]
HEADS = FINDINGS + ["abnormal"]
WINDOWS = ["last_1000", "7d", "30d"]

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"

# The alert thresholds the panels draw (keep in step with
# helm/chexvision/rules/chexvision-alerts.yml and docs/operations.md).
LATENCY_SLO_S = 2.5
DRIFT_LIMIT = 0.10
MACRO_AUC_FLOOR = 0.70


def served_versions(instance: str = "") -> str:
    """The model versions inference serves, as {model_version} series of 1:
    model_info's `version` renamed so it joins the evaluator's gauges."""
    sel = f'{{instance=~"{instance}"}}' if instance else ""
    return (
        "max by (model_version) (label_replace("
        f'chexvision_inference_model_info{sel}, "model_version", "$1", "version", "(.*)"))'
    )


def served_reference(metric: str, extra: str = "", instance: str = "") -> str:
    """An evaluator gauge (split="test") for the served versions only."""
    return (
        f'max by (model_version, finding) ({metric}{{split="test"{extra}}})\n'
        f"  * on (model_version) group_left () {served_versions(instance)}"
    )


def drift(metric: str, reference: str, finding: str = "$finding") -> str:
    """Each replica's drift gauge minus the evaluation's value for the
    version that replica serves (joined per instance, then per version)."""
    return (
        f'{metric}{{finding=~"{finding}", instance=~"$instance"}}\n'
        "  * on (instance, job) group_left (model_version) label_replace("
        'chexvision_inference_model_info, "model_version", "$1", "version", "(.*)")\n'
        "  - on (model_version, finding) group_left ()\n"
        f'  max by (model_version, finding) ({reference}{{split="test"}})'
    )


# --- small builders -----------------------------------------------------------------

class Layout:
    """Hands out panel ids in order, so the JSON is stable from run to run."""

    def __init__(self) -> None:
        self.next_id = 1

    def take(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def query(expr: str, legend: str = "", ref: str = "A", instant: bool = False,
          table: bool = False) -> pb.Dataquery:
    q = pb.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    q = q.legend_format(legend or "__auto")
    q = q.instant() if instant else q.range()
    if table:
        q = q.format(pm.PromQueryFormat.TABLE)
    return q


def targets(*specs: tuple) -> list[pb.Dataquery]:
    """specs: (expr, legend) pairs; refs A, B, C… in order."""
    return [query(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(specs)]


def thresholds(*steps: tuple) -> db.ThresholdsConfig:
    """steps: (value or None, colour); None is the base step."""
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=v, color=c) for v, c in steps])


def ts(layout: Layout, title: str, description: str, tgts: list, unit: str = "short",
       w: int = 12, h: int = 8, lo: float | None = None,
       bars: bool = False, limits: db.ThresholdsConfig | None = None,
       dashed: str | None = None, legend_right: bool = False) -> tsb.Panel:
    p = (tsb.Panel().id(layout.take()).title(title).description(description)
         .datasource(DS).targets(tgts).unit(unit).span(w).height(h)
         .legend(cb.VizLegendOptions().show_legend(True)
                 .display_mode(cm.LegendDisplayMode.TABLE if legend_right else cm.LegendDisplayMode.LIST)
                 .placement(cm.LegendPlacement.RIGHT if legend_right else cm.LegendPlacement.BOTTOM)
                 .calcs(["lastNotNull"] if legend_right else []))
         .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)))
    if lo is not None:
        p = p.min(lo)
    if bars:
        p = p.draw_style(cm.GraphDrawStyle.BARS).fill_opacity(80)
    else:
        p = p.line_width(1).fill_opacity(0).show_points(cm.VisibilityMode.NEVER)
    if limits is not None:
        p = p.thresholds(limits).thresholds_style(
            cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED))
    if dashed:
        # Interval bounds: thin dashed lines beside their estimate.
        p = p.override_by_regexp(dashed, [
            dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [6, 4]}),
            dm.DynamicConfigValue(id_val="custom.lineWidth", value=1),
        ])
    return p


def stat(layout: Layout, title: str, description: str, tgts: list, unit: str = "short",
         w: int = 6, h: int = 4, names: bool = False,
         limits: db.ThresholdsConfig | None = None) -> statb.Panel:
    p = (statb.Panel().id(layout.take()).title(title).description(description)
         .datasource(DS).targets(tgts).unit(unit).span(w).height(h)
         .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields(""))
         .graph_mode(cm.BigValueGraphMode.NONE)
         .text_mode(cm.BigValueTextMode.NAME if names else cm.BigValueTextMode.VALUE_AND_NAME)
         .color_mode(cm.BigValueColorMode.VALUE if limits else cm.BigValueColorMode.NONE))
    if limits is not None:
        p = p.thresholds(limits)
    return p


def table(layout: Layout, title: str, description: str, specs: list[tuple],
          keep: list[str], w: int = 12, h: int = 10, unit: str = "short",
          decimals: float | None = 3) -> tableb.Panel:
    """Instant queries merged into one row per label set. `specs` are
    (expr, column name); each expr is aggregated to the `keep` labels so the
    rows of every query line up (and instance/job stay out of the table)."""
    by = ", ".join(keep)
    tgts = [query(f"max by ({by}) (\n  {expr}\n)", "", chr(ord("A") + i), instant=True, table=True)
            for i, (expr, _) in enumerate(specs)]
    rename = {f"Value #{chr(ord('A') + i)}": name for i, (_, name) in enumerate(specs)}
    if len(specs) == 1:
        rename = {"Value": specs[0][1]}
    order = {name: i for i, name in enumerate(keep + [n for _, n in specs])}
    p = (tableb.Panel().id(layout.take()).title(title).description(description)
         .datasource(DS).targets(tgts).span(w).height(h).unit(unit)
         .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
         .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
             "excludeByName": {"Time": True},
             "indexByName": order,
             "renameByName": rename,
         })))
    if decimals is not None:
        p = p.decimals(decimals)
    return p


def row(layout: Layout, title: str) -> db.Row:
    return db.Row(title).id(layout.take())


def annotation(name: str, expr: str, colour: str) -> db.AnnotationQuery:
    # Prometheus annotations mark each step where the expression has a value.
    return (db.AnnotationQuery().name(name).datasource(DS).enable(True)
            .icon_color(colour).expr(expr))


def base(uid: str, title: str, description: str, time_from: str) -> db.Dashboard:
    return (db.Dashboard(title).uid(uid).description(description)
            .tags(["chexvision"]).editable().refresh("1m").time(time_from, "now")
            .timezone("browser")
            .tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .link(db.DashboardLink("CheXVision").type(dm.DashboardLinkType.DASHBOARDS)
                  .tags(["chexvision"]).as_dropdown(True).include_vars(False).keep_time(True))
            .with_variable(db.DatasourceVariable("datasource").label("Prometheus")
                           .type("prometheus")))


def label_variable(name: str, label: str, query_expr: str) -> db.QueryVariable:
    """Multi-value variable over a label's values; "All" is `.*`."""
    return (db.QueryVariable(name).label(label).datasource(DS)
            .query(query_expr).refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*")
            .current(dm.VariableOption(selected=True, text="All", value="$__all")))


def custom_variable(name: str, label: str, values: list[str], default: str | None = None,
                    ) -> db.CustomVariable:
    v = (db.CustomVariable(name).label(label).values(",".join(values))
         .multi(True).include_all(True).all_value(".*"))
    if default:
        v = v.current(dm.VariableOption(selected=True, text=[default], value=[default]))
    else:
        v = v.current(dm.VariableOption(selected=True, text="All", value="$__all"))
    return v


def text_annotation(a: db.AnnotationQuery, title: str, text: str) -> dict:
    """The SDK's AnnotationQuery has no Prometheus display fields; add them."""
    out = json.loads(json.dumps(a.build(), cls=JSONEncoder))
    out["titleFormat"] = title
    out["textFormat"] = text
    out["useValueForTime"] = False
    return out


# --- Model quality ------------------------------------------------------------------

def model_quality() -> dict:
    L = Layout()
    mv = 'model_version=~"$model_version"'
    fd = 'finding=~"$finding"'
    win = 'window=~"$window"'
    d = (base("chexvision-model-quality", "CheXVision · Model quality",
              "Offline test AUC per version and finding with 95 % patient-bootstrap "
              "intervals, production AUC from radiologists' confirmations beside it, "
              "calibration and label shift. Runbook: docs/operations.md.", "now-30d")
         .with_variable(label_variable("model_version", "Model version",
                                       "label_values(chexvision_model_auc, model_version)"))
         .with_variable(custom_variable("finding", "Finding", HEADS))
         .with_variable(custom_variable("window", "Production window", WINDOWS, "last_1000")))

    d = d.with_row(row(L, "Versions"))
    d = d.with_panel(stat(
        L, "Production version (registry)",
        "The registry's production pointer, as the evaluator last saw it.",
        [query("chexvision_production_model_info", "{{model_version}} · {{model_kind}}")],
        w=6, names=True))
    d = d.with_panel(stat(
        L, "Served versions (inference replicas)",
        "Replicas per model version that inference serves now. More than one version "
        "lasts only while a swap rolls through the replicas.",
        [query("count by (version) (chexvision_inference_model_info)", "{{version}}")],
        w=6))
    d = d.with_panel(stat(
        L, "Production macro AUC (served, $window)",
        f"Macro AUC over the 14 findings on confirmed predictions of the served versions. "
        f"Red under the alert floor {MACRO_AUC_FLOOR}.",
        [query(f'chexvision_production_macro_auc{{{win}}}\n'
               f"  * on (model_version) group_left () {served_versions()}",
               "{{model_version}} · {{window}}")],
        unit="none", w=6,
        limits=thresholds((None, "red"), (MACRO_AUC_FLOOR, "orange"), (0.8, "green"))))
    d = d.with_panel(stat(
        L, "Confirmed predictions in window (served)",
        "How many confirmed predictions the production AUC rests on. The alerts need 200.",
        [query(f'chexvision_production_samples{{{win}}}\n'
               f"  * on (model_version) group_left () {served_versions()}",
               "{{model_version}} · {{window}}")],
        w=6, limits=thresholds((None, "orange"), (200, "green"))))

    d = d.with_row(row(L, "Offline evaluation (test split)"))
    d = d.with_panel(ts(
        L, "Test macro AUC by version (95 % interval dashed)",
        "Set when an evaluation finishes; a new version starts a new line. The dashed "
        "lines are the patient-bootstrap interval.",
        targets(
            (f'chexvision_model_macro_auc{{split="test", {mv}}}', "{{model_version}}"),
            (f'chexvision_model_macro_auc_lower{{split="test", {mv}}}', "{{model_version}} lower"),
            (f'chexvision_model_macro_auc_upper{{split="test", {mv}}}', "{{model_version}} upper")),
        unit="none", dashed="/(lower|upper)$/", legend_right=True))
    d = d.with_panel(ts(
        L, "Test AUC per finding",
        "Per-finding test AUC of the selected versions (abnormal: the normal/abnormal head).",
        targets((f'chexvision_model_auc{{split="test", {mv}, {fd}}}',
                 "{{finding}} · {{model_version}}")),
        unit="none", legend_right=True))
    d = d.with_panel(table(
        L, "Test AUC per finding with 95 % interval",
        "The latest values: one row per version and finding.",
        [(f'chexvision_model_auc{{split="test", {mv}, {fd}}}', "AUC"),
         (f'chexvision_model_auc_lower{{split="test", {mv}, {fd}}}', "lower"),
         (f'chexvision_model_auc_upper{{split="test", {mv}, {fd}}}', "upper")],
        keep=["model_version", "finding"], w=12, h=10))
    d = d.with_panel(ts(
        L, "Calibration: expected calibration error (abnormal head)",
        "ECE over 15 bins of the abnormal probability on the test split; lower is "
        "better. Beside it the abnormal head's AUC.",
        targets((f'chexvision_model_ece{{split="test", {mv}}}', "ECE {{model_version}}"),
                (f'chexvision_model_binary_auc{{split="test", {mv}}}', "AUC {{model_version}}")),
        unit="none", w=12, h=10, legend_right=True))

    d = d.with_row(row(L, "Production (radiologists' confirmations)"))
    d = d.with_panel(ts(
        L, "Macro AUC: production (interval dashed) beside offline test",
        "Production: confirmed predictions of each version in the selected windows "
        "(last_1000 = the last 1,000 confirmed, 7d/30d by prediction time). The alert "
        "fires when the production upper bound falls under the offline value.",
        targets(
            (f"chexvision_production_macro_auc{{{mv}, {win}}}", "production {{model_version}} {{window}}"),
            (f"chexvision_production_macro_auc_lower{{{mv}, {win}}}", "production {{model_version}} {{window}} lower"),
            (f"chexvision_production_macro_auc_upper{{{mv}, {win}}}", "production {{model_version}} {{window}} upper"),
            (f'chexvision_model_macro_auc{{split="test", {mv}}}', "offline {{model_version}}")),
        unit="none", dashed="/(lower|upper)$/", legend_right=True,
        limits=thresholds((None, "red"), (MACRO_AUC_FLOOR, "transparent"))))
    d = d.with_panel(ts(
        L, "Abnormal head AUC: production beside offline test",
        "The normal/abnormal score, the one a worklist triage uses.",
        targets(
            (f"chexvision_production_binary_auc{{{mv}, {win}}}", "production {{model_version}} {{window}}"),
            (f"chexvision_production_binary_auc_lower{{{mv}, {win}}}", "production {{model_version}} {{window}} lower"),
            (f"chexvision_production_binary_auc_upper{{{mv}, {win}}}", "production {{model_version}} {{window}} upper"),
            (f'chexvision_model_binary_auc{{split="test", {mv}}}', "offline {{model_version}}")),
        unit="none", dashed="/(lower|upper)$/", legend_right=True))
    d = d.with_panel(table(
        L, "Per finding: production AUC (interval) against offline test AUC",
        "One row per version, window and finding. A production upper bound under the "
        "offline AUC means the model does worse on this hospital's patients.",
        [(f"chexvision_production_auc{{{mv}, {win}, {fd}}}", "production"),
         (f"chexvision_production_auc_lower{{{mv}, {win}, {fd}}}", "lower"),
         (f"chexvision_production_auc_upper{{{mv}, {win}, {fd}}}", "upper"),
         # The offline value repeated per production window, so it lines up.
         (f"chexvision_production_auc{{{mv}, {win}, {fd}}} * 0\n"
          f'  + on (model_version, finding) group_left () max by (model_version, finding) '
          f'(chexvision_model_auc{{split="test", {mv}, {fd}}})', "offline")],
        keep=["model_version", "window", "finding"], w=24, h=10))
    d = d.with_panel(ts(
        L, "Production AUC per finding",
        "Per-finding AUC on confirmed predictions. Rare findings have wide intervals "
        "(see the table) until enough positives are confirmed.",
        targets((f"chexvision_production_auc{{{mv}, {win}, {fd}}}",
                 "{{finding}} · {{model_version}} {{window}}")),
        unit="none", legend_right=True))
    d = d.with_panel(ts(
        L, "Confirmed predictions per window",
        "The sample the production AUC and its interval rest on.",
        targets((f"chexvision_production_samples{{{mv}, {win}}}", "{{model_version}} {{window}}")),
        legend_right=True))
    d = d.with_panel(ts(
        L, "Feedback and predictions reaching the monitor",
        "Feedback by outcome (joined, amended, duplicate, unmatched: unmatched ones are "
        "dead-lettered) and predictions recorded; pending = predictions still waiting "
        "for a confirmation.",
        targets(
            (f"sum by (outcome) (rate(chexvision_monitor_feedback_total[{RATE}]))", "feedback {{outcome}}"),
            (f"sum by (outcome) (rate(chexvision_monitor_predictions_total[{RATE}]))", "predictions {{outcome}}")),
        unit="ops"))
    d = d.with_panel(ts(
        L, "Pending predictions and feedback delay",
        "Predictions held for a join, and how long confirmations take to arrive "
        "(median and 90th percentile, prediction to confirmation).",
        targets(
            ("sum(chexvision_monitor_pending_predictions)", "pending predictions"),
            (f"histogram_quantile(0.5, sum by (le) (rate(chexvision_feedback_delay_seconds_bucket[{RATE}])))", "delay p50"),
            (f"histogram_quantile(0.9, sum by (le) (rate(chexvision_feedback_delay_seconds_bucket[{RATE}])))", "delay p90")),
        unit="short").override_by_regexp("/^delay/", [
            dm.DynamicConfigValue(id_val="unit", value="s"),
            dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right")]))

    d = d.with_row(row(L, "Label shift: observed against training prevalence"))
    d = d.with_panel(ts(
        L, "Observed prevalence ÷ training prevalence",
        "Per finding, among confirmed cases of the served versions: 1 = as in training. "
        "A shift explains a drift alert or an AUC change without the model being at fault.",
        targets((f"max by (model_version, finding, window) (chexvision_production_prevalence{{{win}, {fd}}})\n"
                 "  / on (model_version, finding) group_left () "
                 f"max by (model_version, finding) (chexvision_training_prevalence{{{fd}}})\n"
                 f"  * on (model_version) group_left () {served_versions()}",
                 "{{finding}} · {{model_version}} {{window}}")),
        unit="none", legend_right=True))
    d = d.with_panel(table(
        L, "Prevalence per finding: production against training",
        "Observed share of confirmed positives against the training split's share.",
        [(f"chexvision_production_prevalence{{{mv}, {win}, {fd}}}", "production"),
         (f"chexvision_production_prevalence{{{mv}, {win}, {fd}}} * 0\n"
          "  + on (model_version, finding) group_left () "
          f"max by (model_version, finding) (chexvision_training_prevalence{{{mv}, {fd}}})", "training")],
        keep=["model_version", "window", "finding"], w=12, h=10, unit="percentunit"))

    out = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    out["annotations"]["list"] = [
        grafana_builtin(),
        text_annotation(annotation(
            "Promotions",
            f'sum(increase(chexvision_promotions_total{{outcome="promoted"}}[{RATE}])) > 0',
            "green"), "Model promoted", "The registry's production pointer moved"),
        text_annotation(annotation(
            "Refused promotions",
            f'sum(increase(chexvision_promotions_total{{outcome="refused"}}[{RATE}])) > 0',
            "orange"), "Promotion refused", "The paired test did not show the new model better"),
    ]
    return out


def grafana_builtin() -> dict:
    """Grafana's own annotations (added by hand in the UI), as every dashboard has."""
    return json.loads(json.dumps(
        db.AnnotationQuery().name("Annotations & Alerts").built_in(1).enable(True).hide(True)
        .icon_color("rgba(0, 211, 255, 1)").type("dashboard")
        .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --")).build(),
        cls=JSONEncoder))


# --- Inference ----------------------------------------------------------------------

def inference() -> dict:
    L = Layout()
    sel = 'route=~"$route", instance=~"$instance"'
    inst = 'instance=~"$instance"'
    req = "chexvision_inference_requests_total"
    d = (base("chexvision-inference", "CheXVision · Inference",
              "Requests, errors and latency of the inference service, its queue and "
              "batches, the served model and swaps, and prediction drift against the "
              "evaluation of the served version. Runbook: docs/operations.md.", "now-6h")
         .with_variable(label_variable("instance", "Replica",
                                       "label_values(chexvision_inference_queue_depth, instance)"))
         .with_variable(label_variable("route", "Route",
                                       f"label_values({req}, route)"))
         .with_variable(custom_variable("finding", "Finding", HEADS)))

    d = d.with_row(row(L, "Requests and errors"))
    d = d.with_panel(ts(
        L, "Requests by route and status code",
        "Answers per second; each line is a route pattern and an HTTP status.",
        targets((f"sum by (route, status) (rate({req}{{{sel}}}[{RATE}]))", "{{route}} {{status}}")),
        unit="reqps", legend_right=True))
    d = d.with_panel(ts(
        L, "5xx share by route",
        "Server errors as a share of a route's answers (0 where a route had none). "
        "The error-rate alert fires over 5 % on the API routes.",
        targets((f'(sum by (route) (rate({req}{{status=~"5..", {sel}}}[{RATE}]))\n'
                 f"  or sum by (route) (rate({req}{{{sel}}}[{RATE}])) * 0)\n"
                 f"  / sum by (route) (rate({req}{{{sel}}}[{RATE}]))", "{{route}}")),
        unit="percentunit", lo=0, legend_right=True,
        limits=thresholds((None, "green"), (0.05, "red"))))
    d = d.with_panel(ts(
        L, "Refused and dropped requests by reason",
        "Refused before any work (the error code: queue_full, not_ready, unauthorized, "
        "bad_request…) and admitted images dropped (client_gone, deadline).",
        targets((f"sum by (reason) (rate(chexvision_inference_rejected_total{{{inst}}}[{RATE}]))", "refused {{reason}}"),
                (f"sum by (reason) (rate(chexvision_inference_skipped_total{{{inst}}}[{RATE}]))", "dropped {{reason}}")),
        unit="reqps", w=12, legend_right=True))
    d = d.with_panel(ts(
        L, "Predictions published for the production monitor",
        "Prediction events to chexvision.predictions by outcome; failed or dropped ones "
        "never get a production AUC.",
        targets((f"sum by (outcome) (rate(chexvision_inference_prediction_events_total{{{inst}}}[{RATE}]))",
                 "{{outcome}}")),
        unit="ops", w=12))

    d = d.with_row(row(L, "Latency"))
    d = d.with_panel(ts(
        L, "End-to-end latency by route (p50, p95, p99)",
        f"From a request's arrival to its answer. The SLO line is the p99 alert's "
        f"{LATENCY_SLO_S} s on the single-image routes.",
        targets(*[
            (f"histogram_quantile({q}, sum by (route, le) "
             f"(rate(chexvision_inference_request_duration_seconds_bucket{{{sel}}}[{RATE}])))",
             f"p{int(float(q) * 100)} {{{{route}}}}")
            for q in ("0.5", "0.95", "0.99")]),
        unit="s", legend_right=True,
        limits=thresholds((None, "green"), (LATENCY_SLO_S, "red"))))
    d = d.with_panel(ts(
        L, "Latency per stage (p50, p95, p99)",
        "Per image: decode, preprocess, queue (waiting for a batch), inference (the "
        "forward pass) and heatmap (Grad-CAM, when asked for).",
        targets(*[
            (f"histogram_quantile({q}, sum by (stage, le) "
             f"(rate(chexvision_inference_stage_duration_seconds_bucket{{{inst}}}[{RATE}])))",
             f"p{int(float(q) * 100)} {{{{stage}}}}")
            for q in ("0.5", "0.95", "0.99")]),
        unit="s", legend_right=True))

    d = d.with_row(row(L, "Queue and batches"))
    d = d.with_panel(ts(
        L, "Queue depth",
        "Images admitted and not yet answered, per replica (decoding, queued or computing).",
        targets((f"sum by (instance) (chexvision_inference_queue_depth{{{inst}}})", "{{instance}}")),
        w=8))
    d = d.with_panel(ts(
        L, "Batch size",
        "Images per forward pass (each test-time view counts): mean and p95.",
        targets(
            (f"sum(rate(chexvision_inference_batch_size_sum{{{inst}}}[{RATE}]))\n"
             f"  / sum(rate(chexvision_inference_batch_size_count{{{inst}}}[{RATE}]))", "mean"),
            (f"histogram_quantile(0.95, sum by (le) (rate(chexvision_inference_batch_size_bucket{{{inst}}}[{RATE}])))", "p95")),
        w=8))
    d = d.with_panel(ts(
        L, "Forward passes per second",
        "Batches computed per second, per replica.",
        targets((f"sum by (instance) (rate(chexvision_inference_batch_size_count{{{inst}}}[{RATE}]))", "{{instance}}")),
        unit="ops", w=8))

    d = d.with_row(row(L, "Served model and swaps"))
    d = d.with_panel(stat(
        L, "Served version",
        "The model each replica serves (architecture; synthetic = trained on synthetic images).",
        [query(f"max by (version, architecture, synthetic) (chexvision_inference_model_info{{{inst}}})",
               "{{version}} · {{architecture}} · synthetic={{synthetic}}")],
        w=8, names=True))
    d = d.with_panel(stat(
        L, "Age of the served model",
        "Time since the serving model was loaded, per replica.",
        [query(f"time() - chexvision_inference_model_loaded_timestamp_seconds{{{inst}}}", "{{instance}}")],
        unit="s", w=4))
    d = d.with_panel(ts(
        L, "Swaps and failed swaps",
        "Models swapped in, and loads that failed by reason (checkpoint, model, registry, "
        "no_model): after a failure the old model keeps serving.",
        targets(
            (f"sum by (instance) (increase(chexvision_inference_model_swaps_total{{{inst}}}[{RATE}]))", "swapped {{instance}}"),
            (f"sum by (reason) (increase(chexvision_inference_model_swap_failures_total{{{inst}}}[{RATE}]))", "failed {{reason}}")),
        bars=True, w=12))

    d = d.with_row(row(L, "Prediction drift: the last 1,000 predictions against the served version's evaluation"))
    d = d.with_panel(ts(
        L, "Mean probability per finding: served (solid) and its evaluation (dashed)",
        "Served: mean predicted probability over each replica's last 1,000 predictions. "
        "Reference: the same on the test split of the version being served.",
        targets(
            (f'chexvision_inference_finding_probability_mean{{finding=~"$finding", {inst}}}', "{{finding}} {{instance}}"),
            (served_reference("chexvision_model_probability_mean", ', finding=~"$finding"', "$instance"),
             "{{finding}} reference {{model_version}}")),
        unit="percentunit", dashed="/reference/", legend_right=True))
    d = d.with_panel(ts(
        L, "Positive rate per finding: served (solid) and its evaluation (dashed)",
        "Share of predictions at or above the registry threshold.",
        targets(
            (f'chexvision_inference_finding_positive_rate{{finding=~"$finding", {inst}}}', "{{finding}} {{instance}}"),
            (served_reference("chexvision_model_positive_rate", ', finding=~"$finding"', "$instance"),
             "{{finding}} reference {{model_version}}")),
        unit="percentunit", dashed="/reference/", legend_right=True))
    d = d.with_panel(ts(
        L, "Positive rate minus reference",
        f"The drift alert fires past ±{DRIFT_LIMIT:.2f} for an hour.",
        targets((drift("chexvision_inference_finding_positive_rate", "chexvision_model_positive_rate"),
                 "{{finding}} {{instance}}")),
        unit="percentunit", legend_right=True,
        limits=thresholds((None, "red"), (-DRIFT_LIMIT, "green"), (DRIFT_LIMIT, "red"))))
    d = d.with_panel(ts(
        L, "Mean probability minus reference",
        "Drift of the mean probability, for the findings whose positive rate moves.",
        targets((drift("chexvision_inference_finding_probability_mean", "chexvision_model_probability_mean"),
                 "{{finding}} {{instance}}")),
        unit="percentunit", legend_right=True))

    out = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    out["annotations"]["list"] = [
        grafana_builtin(),
        text_annotation(annotation(
            "Model swaps",
            f"sum(increase(chexvision_inference_model_swaps_total[{RATE}])) > 0",
            "green"), "Model swapped in", "A replica loaded a new model"),
        text_annotation(annotation(
            "Failed swaps",
            f"sum(increase(chexvision_inference_model_swap_failures_total[{RATE}])) > 0",
            "red"), "Model swap failed", "The old model keeps serving"),
    ]
    return out


# --- Pipeline -----------------------------------------------------------------------

def pipeline() -> dict:
    L = Layout()
    lag_sel = 'group=~"$group", topic=~"$topic"'
    d = (base("chexvision-pipeline", "CheXVision · Pipeline",
              "Ingest and preprocess throughput, datasets ready, training progress, "
              "evaluations, Kafka consumer lag and dead letters, and object store "
              "errors. Runbook: docs/operations.md.", "now-24h")
         .with_variable(label_variable("group", "Consumer group",
                                       "label_values(chexvision_bus_consumer_lag_records, group)"))
         .with_variable(label_variable("topic", "Topic",
                                       "label_values(chexvision_bus_records_total, topic)")))

    d = d.with_row(row(L, "Ingest and preprocess"))
    d = d.with_panel(ts(
        L, "Ingest: images per second by outcome",
        "Images written into raw shards, or rejected (unreadable, bad labels).",
        targets((f"sum by (outcome) (rate(chexvision_ingest_images_total[{RATE}]))", "{{outcome}}")),
        unit="ops", w=8))
    d = d.with_panel(ts(
        L, "Ingest: images still to do",
        "Images of the running ingest not yet processed.",
        targets(("sum(chexvision_ingest_images_remaining)", "remaining")), w=8))
    d = d.with_panel(ts(
        L, "Preprocess: images per second by outcome",
        "Raw images turned into ready 320 px images, or rejected.",
        targets((f"sum by (outcome) (rate(chexvision_preprocess_images_total[{RATE}]))", "{{outcome}}")),
        unit="ops", w=8))
    d = d.with_panel(ts(
        L, "Shards by stage and outcome",
        "Raw shards written by ingest (skipped: finished by an earlier run) and shards "
        "preprocessed.",
        targets((f"sum by (outcome) (increase(chexvision_ingest_shards_total[{RATE}]))", "ingest {{outcome}}"),
                (f"sum by (outcome) (increase(chexvision_preprocess_shards_total[{RATE}]))", "preprocess {{outcome}}")),
        bars=True, w=12))
    d = d.with_panel(stat(
        L, "Datasets ready",
        "Complete datasets announced on chexvision.datasets, by image size.",
        [query("sum by (size_px) (chexvision_preprocess_datasets_ready_total)", "{{size_px}} px")],
        w=6))
    d = d.with_panel(stat(
        L, "Ingest requests",
        "Ingest requests by outcome (completed, failed), since the services started.",
        [query("sum by (outcome) (chexvision_ingest_requests_total)", "{{outcome}}")],
        w=6))

    d = d.with_row(row(L, "Training"))
    d = d.with_panel(stat(
        L, "Run",
        "The run the trainer trains (or trained last).",
        [query("max by (run_id, dataset_id, architecture) (chexvision_trainer_run_info)",
               "{{run_id}} · {{architecture}} on {{dataset_id}}")],
        w=8, names=True))
    d = d.with_panel(stat(
        L, "Epoch · step",
        "Epoch in progress (0-based) and optimiser steps of the run.",
        [query("max(chexvision_trainer_epoch)", "epoch", "A"),
         query("max(chexvision_trainer_step)", "step", "B")],
        w=6))
    d = d.with_panel(stat(
        L, "Estimated time left",
        "The trainer's estimate of the time left in the run.",
        [query("max(chexvision_trainer_eta_seconds)", "ETA")], unit="s", w=5))
    d = d.with_panel(stat(
        L, "Queued runs",
        "Runs accepted and not yet started.",
        [query("sum(chexvision_trainer_queued_runs)", "queued")], w=5))
    d = d.with_panel(ts(
        L, "Loss and learning rate",
        "Loss of the last micro-batch (left) and the learning rate (right).",
        targets(("max(chexvision_trainer_loss)", "loss"),
                ("max(chexvision_trainer_learning_rate)", "learning rate")),
        w=8).override_by_name("learning rate", [
            dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
            dm.DynamicConfigValue(id_val="unit", value="sci")]))
    d = d.with_panel(ts(
        L, "Images per second and step",
        "Live training speed (images consumed) beside the last finished epoch's figure, "
        "and the optimiser step (right): a flat step with a run in progress is a stall.",
        targets((f"sum(rate(chexvision_trainer_images_total[{RATE}]))", "live"),
                ("max(chexvision_trainer_images_per_second)", "last epoch"),
                ("max(chexvision_trainer_step)", "step")),
        w=8).override_by_name("step", [
            dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
            dm.DynamicConfigValue(id_val="unit", value="short")]).unit("ops"))
    d = d.with_panel(ts(
        L, "Loader wait",
        "How long the training step waited for a batch (p50, p95), and the share of "
        "time spent waiting: near 1, the data loader limits training.",
        targets(
            (f"histogram_quantile(0.5, sum by (le) (rate(chexvision_trainer_loader_wait_seconds_bucket[{RATE}])))", "p50"),
            (f"histogram_quantile(0.95, sum by (le) (rate(chexvision_trainer_loader_wait_seconds_bucket[{RATE}])))", "p95"),
            (f"sum(rate(chexvision_trainer_loader_wait_seconds_sum[{RATE}]))", "share of time waiting")),
        unit="s", w=8).override_by_name("share of time waiting", [
            dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
            dm.DynamicConfigValue(id_val="unit", value="percentunit")]))
    d = d.with_panel(ts(
        L, "Validation AUC after each epoch",
        "Macro AUC over the findings and the abnormal head's AUC on the validation split.",
        targets(("max(chexvision_trainer_val_macro_auc)", "macro"),
                ("max(chexvision_trainer_val_binary_auc)", "abnormal")),
        unit="none", w=8))
    d = d.with_panel(stat(
        L, "Runs by outcome",
        "Runs that stopped (completed, stopped_early, failed, interrupted) and "
        "checkpoints announced, since the trainer started.",
        [query("sum by (outcome) (chexvision_trainer_runs_total)", "{{outcome}}", "A"),
         query("sum(chexvision_trainer_checkpoints_total)", "checkpoints", "B")],
        w=8))
    d = d.with_panel(stat(
        L, "Training requests by outcome",
        "Accepted, duplicate, ignored (another image size).",
        [query("sum by (outcome) (chexvision_trainer_requests_total)", "{{outcome}}")],
        w=8))

    d = d.with_row(row(L, "Evaluation and promotion"))
    d = d.with_panel(stat(
        L, "Evaluations and promotions",
        "Evaluations by outcome and promotion decisions, since the evaluator started.",
        [query("sum by (outcome) (chexvision_evaluations_total)", "evaluation {{outcome}}", "A"),
         query("sum by (outcome) (chexvision_promotions_total)", "promotion {{outcome}}", "B")],
        w=12))
    d = d.with_panel(ts(
        L, "Evaluation speed",
        "Images scored per second (live) and the last evaluation's speed.",
        targets((f"sum(rate(chexvision_evaluation_images_scored_total[{RATE}]))", "live"),
                ("max(chexvision_evaluation_images_per_second)", "last evaluation")),
        unit="ops", w=12))

    d = d.with_row(row(L, "Kafka: consumer lag and dead letters"))
    d = d.with_panel(ts(
        L, "Consumer lag by group and topic",
        "Records not yet committed (high watermark minus committed offset), summed over "
        "partitions. The alert fires when a lag grows for an hour without ever emptying.",
        targets((f"sum by (group, topic) (chexvision_bus_consumer_lag_records{{{lag_sel}}})", "{{group}} · {{topic}}")),
        legend_right=True))
    d = d.with_panel(ts(
        L, "Consumer lag per partition",
        "The same per partition: one hot partition points at one stuck consumer.",
        targets((f"max by (group, topic, partition) (chexvision_bus_consumer_lag_records{{{lag_sel}}})",
                 "{{group}} · {{topic}} [{{partition}}]")),
        legend_right=True))
    d = d.with_panel(ts(
        L, "Dead letters by source topic",
        "Records moved to chexvision.dlq (after retries, or undecodable), by the topic "
        "they came from.",
        targets((f'sum by (topic) (rate(chexvision_bus_records_total{{outcome="dead_lettered", topic=~"$topic"}}[{RATE}]))',
                 "{{topic}}")),
        unit="ops", w=12, limits=thresholds((None, "green"), (0.0001, "red"))))
    d = d.with_panel(ts(
        L, "Records handled by topic and outcome",
        "Handled, retried, dead-lettered records per second, and the handler's p95.",
        targets((f'sum by (topic, outcome) (rate(chexvision_bus_records_total{{topic=~"$topic"}}[{RATE}]))',
                 "{{topic}} {{outcome}}"),
                (f'histogram_quantile(0.95, sum by (topic, le) (rate(chexvision_bus_handler_seconds_bucket{{topic=~"$topic"}}[{RATE}])))',
                 "p95 handler {{topic}}")),
        unit="ops", w=12, legend_right=True).override_by_regexp("/^p95/", [
            dm.DynamicConfigValue(id_val="unit", value="s"),
            dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right")]))

    d = d.with_row(row(L, "Object store (S3)"))
    d = d.with_panel(ts(
        L, "Store errors by service and operation",
        "Failed object store calls per second (not_found is an answer, not an error).",
        targets((f'sum by (job, operation) (rate(chexvision_store_operations_total{{outcome="error"}}[{RATE}]))',
                 "{{job}} {{operation}}")),
        unit="ops", w=8, limits=thresholds((None, "green"), (0.0001, "red"))))
    d = d.with_panel(ts(
        L, "Store calls by operation and outcome",
        "Calls per second over every service with a store.",
        targets((f"sum by (operation, outcome) (rate(chexvision_store_operations_total[{RATE}]))",
                 "{{operation}} {{outcome}}")),
        unit="ops", w=8))
    d = d.with_panel(ts(
        L, "Store latency p95 by operation",
        "Per service and operation.",
        targets((f"histogram_quantile(0.95, sum by (job, operation, le) "
                 f"(rate(chexvision_store_operation_duration_seconds_bucket[{RATE}])))",
                 "{{job}} {{operation}}")),
        unit="s", w=8))

    d = d.with_row(row(L, "Services"))
    d = d.with_panel(table(
        L, "Running services",
        "Every CheXVision process Prometheus scrapes, with its build version.",
        [("chexvision_build_info", "up")],
        keep=["service", "version", "instance"], w=24, h=6, decimals=None))

    out = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    out["annotations"]["list"] = [grafana_builtin()]
    return out


DASHBOARDS = {
    "model-quality.json": model_quality,
    "inference.json": inference,
    "pipeline.json": pipeline,
}


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
        (out / name).write_text(text, encoding="utf-8")
        print(f"wrote {out / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
