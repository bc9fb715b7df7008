#!/usr/bin/env bash
# Validate the operations and deployment files under ops/ and docker/.
#
#   ops/check.sh                    # the checks below; exits non-zero on any failure
#   ops/check.sh --with-rabbitmq    # also boot a throwaway RabbitMQ node (needs a
#                                   # local rabbitmq-server install) with the
#                                   # definitions and the broker settings: topology,
#                                   # the events queue's policy, max_message_size, logins,
#                                   # the compose vhost "partitioned", and the
#                                   # definitions with the 3-partition topology
#   ops/check.sh --with-worker target/debug/palworker
#                                   # also run the compose stack's files for real on
#                                   # loopback: throwaway node, `palworker sim`,
#                                   # `palworker run`, the sample events, broker
#                                   # permissions, a poison message set aside by the
#                                   # delivery-limit policy, the production config,
#                                   # `palworker topology --partitions 3` against
#                                   # ops/rabbitmq/topology-3-partitions.json,
#                                   # SIGTERM drain
#
# Checks:
#   - every JSON file parses (python3 -m json.tool)
#   - every YAML file parses (PyYAML; installed with pip if missing)
#   - every TOML file parses (python3 tomllib)
#   - promtool check rules / test rules on ops/prometheus/alerts.yml
#   - promtool check config on docker/prometheus.yml, from a temporary copy laid
#     out as in the Prometheus container (rules/palworker-alerts.yml)
#   - every PromQL expression of the Grafana dashboard parses (promtool, as
#     recording rules)
#   - every palworker_* metric used by the dashboard and the alerts is one of
#     SPEC section 9 or of the agreed extras (list below); label values used in
#     equality matchers belong to the closed label sets
#   - every runbook_url anchor exists in ops/RUNBOOK.md
#   - the broker side matches the worker configs (ops/palworker.production.toml,
#     docker/palworker.compose.toml): their names exist in
#     ops/rabbitmq/definitions.json, whose policy on the events queue alone
#     carries amqp.delivery_limit and amqp.dead_letter_exchange, and the broker
#     configs' max_message_size is at least amqp.max_message_bytes
#   - tenant partitions on the broker: ops/rabbitmq/topology-3-partitions.json
#     is what `palworker topology --partitions 3` prints for the production
#     config (the vhost, the single-process objects of definitions.json, the
#     partitions exchange, quorum queues with single active consumer, delivery
#     limit and dead-letter exchange, bindings p0..p2) and declares what it
#     shares with definitions.json alike; no policy applies to a partition
#     queue; the permissions of definitions.json let router_user
#     consume the events queue and publish to the partitions exchange, let the
#     workers' user consume and bind the partition queues but not publish to
#     the partitions exchange; the compose vhost "partitioned" has the same
#     permissions as "/"
#   - ops/kubernetes/configmap.yaml carries ops/palworker.production.toml verbatim
#   - the ledger backup CronJob (ops/kubernetes/ledger-backup.yaml) reaches the
#     workers as deployed: same image, the pods' names in the headless Service,
#     PARTITIONS = the StatefulSet's replicas, their port, the admin token only,
#     no ledger of its own, listed in kustomization.yaml and named by
#     PalworkerLedgerBackupStale
#   - the partitions agree: [partitions] count = the StatefulSet's replicas =
#     the routers' count = the backup's PARTITIONS, admin_urls one per pod in
#     ordinal order, each pod's index from its pod-index label, a ledger
#     volumeClaimTemplate; the routers' configuration has the workers' [amqp]
#     and [security] but its own broker user, which is router_user (also in
#     secret.example.yaml) and neither the workers' user nor a publisher;
#     router.yaml is in kustomization.yaml exactly when count > 1
#   - ops/kubernetes/router.yaml: a Deployment of 2 `palworker route` replicas
#     with the workers' image and security context, /healthz and /readyz
#     probes, its own ConfigMap and no volume or secret file, a
#     PodDisruptionBudget (minAvailable 1) and a Service selecting the routers
#     and not the workers
#   - `kubectl kustomize ops/kubernetes` builds (if kubectl is installed) and
#     every container runs the kustomized image
#   - Kubernetes manifests against the API schemas (kubernetes-validate, if it
#     can be installed), docker/compose.yaml with docker compose (or the
#     docker-compose v1 fallback) when available, with and without the
#     profile "partitioned"
#   - the compose profile "partitioned": palworker-router (`route`) and
#     palworker-p0/-p1 (count 2, index 0/1, admin_urls of both) in a vhost of
#     their own, each with its own port and (workers) ledger volume and PAL
#     simulator; the default services have no profile
#
# promtool comes from Debian's `prometheus` package, installed (as root) when
# missing; the package's service is kept from starting.

set -uo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

with_rabbitmq=0
worker_binary=""
usage="usage: ops/check.sh [--with-rabbitmq] [--with-worker BINARY]"
while [ $# -gt 0 ]; do
    case "$1" in
        --with-rabbitmq) with_rabbitmq=1 ;;
        --with-worker)
            [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
            worker_binary="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
            shift
            ;;
        -h | --help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
    shift
done

failures=0
warnings=0
passed=0
work_dir="$(mktemp -d)"
trap 'rm -rf "$work_dir"' EXIT

step() { printf '\n==> %s\n' "$*"; }
pass() { printf '  ok    %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf '  FAIL  %s\n' "$*"; failures=$((failures + 1)); }
warn() { printf '  skip  %s\n' "$*"; warnings=$((warnings + 1)); }

# check DESCRIPTION COMMAND...: run, pass or fail, show the output on failure.
check() {
    local description="$1"
    shift
    local output
    if output="$("$@" 2>&1)"; then
        pass "$description"
    else
        fail "$description"
        printf '%s\n' "$output" | sed 's/^/        /'
    fi
}

# --------------------------------------------------------------------------
step "tools"

if ! command -v python3 > /dev/null; then
    echo "python3 is required" >&2
    exit 1
fi

install_promtool() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get > /dev/null; then
        return 1
    fi
    # Keep the package's Prometheus server from starting (policy-rc.d is how
    # Debian lets an administrator veto service starts during installs).
    local created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus > /dev/null
    local status=$?
    if [ "$created_policy" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    if command -v systemctl > /dev/null && systemctl is-active --quiet prometheus 2> /dev/null; then
        systemctl disable --now prometheus > /dev/null 2>&1
    fi
    return $status
}

if command -v promtool > /dev/null || install_promtool; then
    pass "promtool: $(promtool --version 2>&1 | head -n 1)"
    have_promtool=1
else
    fail "promtool is missing and could not be installed (apt-get install prometheus, as root)"
    have_promtool=0
fi

if python3 -c 'import yaml' 2> /dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check pyyaml > /dev/null 2>&1; then
    pass "PyYAML"
    have_yaml=1
else
    warn "PyYAML not available: YAML files are checked by promtool only where it applies"
    have_yaml=0
fi

# --------------------------------------------------------------------------
step "JSON files"
while IFS= read -r file; do
    check "$file" python3 -m json.tool "$file"
done < <(find ops docker -type f -name '*.json' | sort)

step "YAML files"
if [ "$have_yaml" = 1 ]; then
    while IFS= read -r file; do
        check "$file" python3 -c 'import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1])))' "$file"
    done < <(find ops docker -type f \( -name '*.yml' -o -name '*.yaml' \) | sort)
else
    warn "YAML parsing (no PyYAML)"
fi

step "TOML files"
while IFS= read -r file; do
    check "$file" python3 -c 'import sys, tomllib; tomllib.load(open(sys.argv[1], "rb"))' "$file"
done < <(find ops docker -type f -name '*.toml' | sort)

step "shell and Python scripts"
while IFS= read -r file; do
    check "$file (bash -n)" bash -n "$file"
done < <(find ops docker -type f -name '*.sh' | sort)
while IFS= read -r file; do
    check "$file (compiles)" python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' "$file"
done < <(find ops docker -type f -name '*.py' | sort)

# --------------------------------------------------------------------------
step "Prometheus"
if [ "$have_promtool" = 1 ]; then
    check "promtool check rules ops/prometheus/alerts.yml" promtool check rules ops/prometheus/alerts.yml

    # The config names its rule file relative to itself, as mounted in the
    # container by docker/compose.yaml.
    mkdir -p "$work_dir/prometheus/rules"
    cp docker/prometheus.yml "$work_dir/prometheus/prometheus.yml"
    cp ops/prometheus/alerts.yml "$work_dir/prometheus/rules/palworker-alerts.yml"
    check "promtool check config docker/prometheus.yml (container layout)" \
        promtool check config "$work_dir/prometheus/prometheus.yml"

    if [ "$have_yaml" = 1 ]; then
        # The unit tests compare labels only: run them on a copy of the rules
        # without annotations.
        mkdir -p "$work_dir/rule-tests"
        python3 - ops/prometheus/alerts.yml "$work_dir/rule-tests/alerts.yml" << 'EOF'
import sys, yaml
rules = yaml.safe_load(open(sys.argv[1]))
for group in rules["groups"]:
    for rule in group["rules"]:
        rule.pop("annotations", None)
yaml.safe_dump(rules, open(sys.argv[2], "w"), sort_keys=False)
EOF
        cp ops/prometheus/alerts_test.yml "$work_dir/rule-tests/alerts_test.yml"
        check "promtool test rules ops/prometheus/alerts_test.yml" \
            bash -c 'cd "$1" && promtool test rules alerts_test.yml' _ "$work_dir/rule-tests"
    else
        warn "promtool test rules (needs PyYAML to strip annotations)"
    fi

    # Dashboard queries, with Grafana's variables replaced, as recording rules.
    python3 - ops/grafana/palworker-dashboard.json "$work_dir/dashboard-rules.yml" << 'EOF'
import json, sys
dashboard = json.load(open(sys.argv[1]))
expressions = []
def walk(panels):
    for panel in panels:
        walk(panel.get("panels", []))
        for target in panel.get("targets", []):
            if target.get("expr"):
                expressions.append((panel.get("title", "?"), target["expr"]))
walk(dashboard["panels"])
with open(sys.argv[2], "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for number, (title, expr) in enumerate(expressions):
        expr = (expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
                    .replace("$__range", "1h").replace("$job", ".*").replace("$instance", ".*"))
        out.write(f"      - record: dashboard:query_{number}\n")
        out.write(f"        expr: {json.dumps(expr)}\n")
EOF
    check "Grafana dashboard queries parse (promtool)" promtool check rules "$work_dir/dashboard-rules.yml"
else
    warn "promtool checks"
fi

# --------------------------------------------------------------------------
step "metric names and label values"
check "dashboard and alerts use only agreed palworker_* metrics and label values" python3 - << 'EOF'
import json, re, sys

# SPEC section 9, the metrics table.
SPEC_METRICS = {
    "palworker_events_total": "counter",
    "palworker_actions_total": "counter",
    "palworker_action_retries_total": "counter",
    "palworker_actions_pending": "gauge",
    "palworker_api_requests_total": "counter",
    "palworker_api_request_duration_seconds": "histogram",
    "palworker_event_completion_seconds": "histogram",
    "palworker_amqp_connected": "gauge",
}
# Agreed additions (the worker exports these too).
EXTRA_METRICS = {
    "palworker_dead_letters_total": "counter",
    "palworker_held_plans": "gauge",
    "palworker_ledger_size_bytes": "gauge",
    "palworker_events_in_flight": "gauge",
    "palworker_ledger_available": "gauge",
    "palworker_ledger_errors_total": "counter",
    # SPEC section 11.2 (issue 16)
    "palworker_actions_scheduled": "gauge",
    "palworker_ledger_disk_free_bytes": "gauge",
    "palworker_ledger_pruned_total": "counter",
    "palworker_paused": "gauge",
    # SPEC section 11.3 (issue 17)
    "palworker_revocation_seconds": "histogram",
    "palworker_oldest_open_removal_seconds": "gauge",
    "palworker_results_pending": "gauge",
    "palworker_results_published_total": "counter",
}
ALLOWED = {**SPEC_METRICS, **EXTRA_METRICS}
LABEL_VALUES = {
    "outcome": {"accepted", "duplicate", "dead_lettered", "held",
                "done", "noop", "failed", "cancelled", "manual", "skipped", "orphaned"},
    "op": {"remove", "link", "update"},
    "reason": {"throttled", "server_error", "timeout", "connection", "token", "unauthorized",
               "invalid_json", "not_cloudevent", "unsupported_specversion", "missing_attribute",
               "invalid_attribute", "unknown_type", "invalid_data", "missing_field", "invalid_field",
               "unsupported_content_type", "too_large", "publisher_not_allowed"},
    "kind": {"event", "action", "marker", "audit"},
}

def allowed(name):
    if name in ALLOWED:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and ALLOWED.get(base) == "histogram":
            return True
    return False

sources = {
    "ops/grafana/palworker-dashboard.json": open("ops/grafana/palworker-dashboard.json").read(),
    "ops/prometheus/alerts.yml": open("ops/prometheus/alerts.yml").read(),
    "ops/prometheus/alerts_test.yml": open("ops/prometheus/alerts_test.yml").read(),
}
problems = []
used = set()
for path, text in sources.items():
    for name in sorted(set(re.findall(r"\bpalworker_[a-z0-9_]+", text))):
        used.add(name)
        if not allowed(name):
            problems.append(f"{path}: unknown metric {name}")
    for label, value in re.findall(r'\b(outcome|op|reason|kind)\s*=\s*\\?"([^"\\]*)\\?"', text):
        if value not in LABEL_VALUES[label]:
            problems.append(f'{path}: {label}="{value}" is not a value of that label')

# Cross-check the list above against SPEC.md when it is at hand (shared/ beside
# the repository), so a renamed metric in the contract is noticed here.
for spec_path in ("../shared/SPEC.md", "shared/SPEC.md"):
    try:
        spec = open(spec_path).read()
    except OSError:
        continue
    section = spec.split("## 9.", 1)[1].split("\n## ", 1)[0]
    in_spec = set(re.findall(r"^\| `(palworker_[a-z0-9_]+)` \|", section, re.M))
    if in_spec != set(SPEC_METRICS):
        problems.append(f"{spec_path} section 9 lists {sorted(in_spec)}, this script {sorted(SPEC_METRICS)}")
    break

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"{len(used)} metric names in use")
EOF

# --------------------------------------------------------------------------
step "runbook links"
check "every runbook_url anchor is a heading of ops/RUNBOOK.md" python3 - << 'EOF'
import re, sys
headings = set()
for line in open("ops/RUNBOOK.md"):
    match = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
    if match:
        anchor = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        headings.add(anchor)
problems = []
alert_names = re.findall(r"^\s*- alert:\s*(\S+)", open("ops/prometheus/alerts.yml").read(), re.M)
urls = re.findall(r"runbook_url:\s*\"?([^\"\s]+)", open("ops/prometheus/alerts.yml").read())
if len(urls) != len(alert_names):
    problems.append(f"{len(alert_names)} alerts but {len(urls)} runbook_url annotations")
for alert, url in zip(alert_names, urls):
    anchor = url.rsplit("#", 1)[-1]
    if "ops/RUNBOOK.md#" not in url or anchor not in headings:
        problems.append(f"{alert}: {url} has no matching heading in ops/RUNBOOK.md")
    if anchor != alert.lower():
        problems.append(f"{alert}: runbook anchor #{anchor} is not the alert's own section")
# In-document links too.
for anchor in re.findall(r"\]\(#([^)]+)\)", open("ops/RUNBOOK.md").read()):
    if anchor not in headings:
        problems.append(f"ops/RUNBOOK.md links to missing #{anchor}")
if problems:
    print("\n".join(problems))
    sys.exit(1)
EOF

# --------------------------------------------------------------------------
step "broker policy and limits"
check "definitions, delivery-limit policy and max_message_size match the worker configs" python3 - << 'EOF'
import json, re, sys, tomllib
from urllib.parse import unquote, urlsplit

# The worker's defaults (config/src/raw.rs) for keys a config leaves out.
DEFAULTS = {"exchange": "pal.lifecycle", "queue": "palworker.events",
            "dead_letter_exchange": "pal.lifecycle.dlx", "dead_letter_queue": "palworker.dead",
            "prefetch": 64, "max_message_bytes": 262144, "delivery_limit": 20}
# Each worker config with the broker config of the broker it talks to; both
# brokers load ops/rabbitmq/definitions.json (compose.yaml mounts it).
PAIRS = [("ops/palworker.production.toml", "ops/rabbitmq/rabbitmq.conf"),
         ("docker/palworker.compose.toml", "docker/rabbitmq.conf")]

definitions = json.load(open("ops/rabbitmq/definitions.json"))
problems = []
compose = open("docker/compose.yaml").read()
for mount in ("../ops/rabbitmq/definitions.json:/etc/rabbitmq/definitions.d/",
              "./rabbitmq.conf:/etc/rabbitmq/conf.d/"):
    if mount not in compose:
        problems.append(f"docker/compose.yaml: the rabbitmq service no longer mounts {mount}")

def named(kind, vhost, name):
    return any(o["name"] == name and o["vhost"] == vhost for o in definitions.get(kind, []))

def broker_setting(path, key):
    values = re.findall(rf"^\s*{re.escape(key)}\s*=\s*(\S+)\s*$", open(path).read(), re.M)
    return values[-1] if values else None

for config_path, broker_path in PAIRS:
    amqp = {**DEFAULTS, **tomllib.load(open(config_path, "rb")).get("amqp", {})}
    if "url" in amqp:
        vhosts = [unquote(urlsplit(amqp["url"]).path[1:]) or "/"]
    else:  # the URL comes from elsewhere (a file, the environment)
        vhosts = sorted({q["vhost"] for q in definitions["queues"] if q["name"] == amqp["queue"]}) or ["/"]
    for vhost in vhosts:
        where = f"{config_path} (vhost {vhost!r})"
        for kind, key in (("exchanges", "exchange"), ("exchanges", "dead_letter_exchange"),
                          ("queues", "queue"), ("queues", "dead_letter_queue")):
            if not named(kind, vhost, amqp[key]):
                problems.append(f"{where}: amqp.{key} = {amqp[key]!r} is not in the definitions")
        # RabbitMQ applies the matching policy of highest priority, alone.
        matching = sorted((p for p in definitions.get("policies", [])
                           if p["vhost"] == vhost and p.get("apply-to", "all") in ("queues", "all")
                           and re.search(p["pattern"], amqp["queue"])),
                          key=lambda p: -p.get("priority", 0))
        if not matching:
            problems.append(f"{where}: no policy applies to {amqp['queue']!r}")
            continue
        policy = matching[0]
        for key, want in (("delivery-limit", amqp["delivery_limit"]),
                          ("dead-letter-exchange", amqp["dead_letter_exchange"])):
            got = policy["definition"].get(key)
            if got != want:
                problems.append(f"{where}: policy {policy['name']!r} has {key} {got!r}, the worker {want!r}")
        if not (policy["pattern"].startswith("^") and policy["pattern"].endswith("$")):
            problems.append(f"policy {policy['name']!r}: pattern {policy['pattern']!r} is not anchored")
        for queue in definitions["queues"]:
            if queue["vhost"] == vhost and queue["name"] != amqp["queue"] \
                    and re.search(policy["pattern"], queue["name"]):
                problems.append(f"policy {policy['name']!r} also applies to {queue['name']!r}")
    size = broker_setting(broker_path, "max_message_size")
    if size is None or not size.isdigit():
        problems.append(f"{broker_path}: no max_message_size in bytes")
    elif int(size) < amqp["max_message_bytes"]:
        problems.append(f"{broker_path}: max_message_size {size} is below amqp.max_message_bytes "
                        f"{amqp['max_message_bytes']} of {config_path}: the worker could not "
                        "receive, and so not dead-letter, the messages in between")
    else:
        print(f"{config_path}: at most {amqp['prefetch']} x {int(size) // 1024} KiB "
              f"= {amqp['prefetch'] * int(size) // 1048576} MiB of bodies in flight")
if problems:
    print("\n".join(dict.fromkeys(problems)))
    sys.exit(1)
EOF

check "topology-3-partitions.json is \`palworker topology --partitions 3\` for the production config, compatible with definitions.json" python3 - << 'EOF'
import json, sys, tomllib
from urllib.parse import unquote, urlsplit

# What `palworker topology --partitions N` prints (SPEC section 10, ops/README.md;
# worker/src/amqp/partitions.rs): the vhost, the single-process objects (the
# events queue with the arguments the worker creates it with), the partitions
# exchange and N quorum queues with their bindings.
DEFAULTS = {"exchange": "pal.lifecycle", "queue": "palworker.events",
            "dead_letter_exchange": "pal.lifecycle.dlx", "dead_letter_queue": "palworker.dead",
            "delivery_limit": 20}
amqp = {**DEFAULTS, **tomllib.load(open("ops/palworker.production.toml", "rb"))["amqp"]}
vhost = unquote(urlsplit(amqp["url"]).path[1:]) or "/"
definitions = json.load(open("ops/rabbitmq/definitions.json"))
example = json.load(open("ops/rabbitmq/topology-3-partitions.json"))
count = 3

def base(kind, names):
    return [o for o in definitions[kind] if o["vhost"] == vhost and
            (o.get("name") in names or o.get("source") in names)]

single_exchanges = (amqp["exchange"], amqp["dead_letter_exchange"])
single_queues = (amqp["queue"], amqp["dead_letter_queue"])
partitions_exchange = f"{amqp['exchange']}.partitions"
def events_arguments(queue):
    if queue["name"] != amqp["queue"]:
        return queue
    return {**queue, "arguments": {**queue["arguments"], "x-delivery-limit": amqp["delivery_limit"],
                                   "x-dead-letter-exchange": amqp["dead_letter_exchange"]}}

want = {
    "vhosts": [{"name": vhost}],
    "exchanges": base("exchanges", single_exchanges) + [
        {"name": partitions_exchange, "vhost": vhost, "type": "direct", "durable": True,
         "auto_delete": False, "internal": False, "arguments": {}}],
    "queues": [events_arguments(q) for q in base("queues", single_queues)] + [
        {"name": f"{amqp['queue']}.p{i}", "vhost": vhost, "durable": True, "auto_delete": False,
         "arguments": {"x-queue-type": "quorum", "x-single-active-consumer": True,
                       "x-delivery-limit": amqp["delivery_limit"],
                       "x-dead-letter-exchange": amqp["dead_letter_exchange"]}}
        for i in range(count)],
    "bindings": base("bindings", single_exchanges) + [
        {"source": partitions_exchange, "vhost": vhost, "destination": f"{amqp['queue']}.p{i}",
         "destination_type": "queue", "routing_key": f"p{i}", "arguments": {}}
        for i in range(count)],
}
problems = []
if sorted(example) != sorted(want):
    problems.append(f"top-level keys {sorted(example)}, expected {sorted(want)} (users and permissions are not printed)")
for kind, objects in want.items():
    canon = lambda items: sorted(json.dumps(o, sort_keys=True) for o in items)
    got = example.get(kind, [])
    for line in sorted(set(canon(objects)) - set(canon(got))):
        problems.append(f"{kind}: missing {line}")
    for line in sorted(set(canon(got)) - set(canon(objects))):
        problems.append(f"{kind}: unexpected {line}")
# Loaded together with definitions.json, the first declaration of a queue or
# exchange stays (an import never fails on an existing one): what they share
# must not differ in type or durability. The events queue's delivery limit
# and dead-letter exchange, which definitions.json leaves to its policy, may.
def shape(o):
    return {k: v for k, v in o.items() if k != "arguments"} | {"x-queue-type": o["arguments"].get("x-queue-type")}
for kind in ("exchanges", "queues"):
    mine = {o["name"]: o for o in definitions[kind]}
    for o in example.get(kind, []):
        if o["name"] in mine and shape(mine[o["name"]]) != shape(o):
            problems.append(f"{kind}: {o['name']} is declared differently in definitions.json")
# No policy of definitions.json may apply to a partition queue: it has its own arguments.
import re
for policy in definitions.get("policies", []):
    for i in range(count):
        if re.search(policy["pattern"], f"{amqp['queue']}.p{i}"):
            problems.append(f"policy {policy['name']!r} applies to {amqp['queue']}.p{i}")
if problems:
    print("\n".join(problems))
    sys.exit(1)
EOF
check "broker permissions: the routers forward, the partition workers consume and bind; only router_user may publish to the partitions" python3 - << 'EOF'
import json, re, sys, tomllib
from urllib.parse import unquote, urlsplit

config = tomllib.load(open("ops/palworker.production.toml", "rb"))
amqp, partitions = config["amqp"], config.get("partitions", {})
count, router = partitions.get("count", 1), partitions.get("router_user")
worker = urlsplit(amqp["url"]).username
vhost = unquote(urlsplit(amqp["url"]).path[1:]) or "/"
definitions = json.load(open("ops/rabbitmq/definitions.json"))
dev = json.load(open("docker/rabbitmq-dev-users.json"))
problems = []

def permission(defs, user, vhost):
    return next((p for p in defs.get("permissions", []) if p["user"] == user and p["vhost"] == vhost), None)

def may(user, what, name):
    p = permission(definitions, user, vhost)
    return p is not None and re.search(p[what], name) is not None

partitions_exchange = f"{amqp['exchange']}.partitions"
queues = [f"{amqp['queue']}.p{i}" for i in range(max(count, 3))]   # and the example's 3
users = {u["name"] for u in definitions["users"]}
needs = []
if router:
    if router not in users:
        problems.append(f"router_user {router!r} is not a user of definitions.json")
    needs += [(router, "read", amqp["queue"]), (router, "write", partitions_exchange),
              (router, "write", amqp["dead_letter_exchange"])]
    needs += [(router, "configure", name) for name in
              (amqp["exchange"], amqp["queue"], amqp["dead_letter_exchange"], amqp["dead_letter_queue"],
               partitions_exchange, *queues)]
    needs += [(router, "read", amqp["exchange"]), (router, "read", amqp["dead_letter_exchange"]),
              (router, "read", partitions_exchange), (router, "write", amqp["queue"]),
              (router, "write", amqp["dead_letter_queue"])]
    needs += [(router, "write", name) for name in queues]
    if may(worker, "write", partitions_exchange):
        problems.append(f"{worker} may publish to {partitions_exchange}: only {router} may (forwarded publishers)")
needs += [(worker, "read", partitions_exchange)]
needs += [(worker, what, name) for name in queues for what in ("configure", "write", "read")]
needs += [(worker, "configure", partitions_exchange), (worker, "write", amqp["dead_letter_exchange"])]
for user, what, name in needs:
    if not may(user, what, name):
        problems.append(f"{user} has no {what} permission on {name!r} (vhost {vhost})")

# The compose vhost "partitioned" gives the same users the same permissions.
for vhost_dev in sorted({p["vhost"] for p in dev.get("permissions", [])} - {"/"}):
    for p in definitions["permissions"]:
        q = permission(dev, p["user"], vhost_dev)
        if q is None or {k: q[k] for k in ("configure", "write", "read")} != {k: p[k] for k in ("configure", "write", "read")}:
            problems.append(f"docker/rabbitmq-dev-users.json: {p['user']}'s permissions in {vhost_dev!r} differ from definitions.json's")
    for t in definitions.get("topic_permissions", []):
        if {**t, "vhost": vhost_dev} not in dev.get("topic_permissions", []):
            problems.append(f"docker/rabbitmq-dev-users.json: {t['user']}'s topic permission in {vhost_dev!r} differs")
    if {"name": vhost_dev} not in dev.get("vhosts", []):
        problems.append(f"docker/rabbitmq-dev-users.json: vhost {vhost_dev!r} is not declared")
dev_users = {u["name"] for u in dev["users"]}
if users - dev_users:
    problems.append(f"docker/rabbitmq-dev-users.json has no dev password for {sorted(users - dev_users)}")
if problems:
    print("\n".join(problems))
    sys.exit(1)
EOF

# --------------------------------------------------------------------------
step "Kubernetes"
if [ "$have_yaml" = 1 ]; then
    check "configmap.yaml carries ops/palworker.production.toml verbatim" python3 -c '
import sys, yaml
configmap = yaml.safe_load(open("ops/kubernetes/configmap.yaml"))
if configmap["data"]["palworker.toml"] != open("ops/palworker.production.toml").read():
    sys.exit("ops/kubernetes/configmap.yaml differs from ops/palworker.production.toml")
'
    check "kustomization.yaml lists existing files" python3 -c '
import os, sys, yaml
kustomization = yaml.safe_load(open("ops/kubernetes/kustomization.yaml"))
missing = [r for r in kustomization.get("resources", []) if not os.path.exists(os.path.join("ops/kubernetes", r))]
sys.exit(f"missing: {missing}" if missing else 0)
'
    check "ledger-backup.yaml reaches every partition worker as deployed (image, addresses, admin token, no ledger of its own)" python3 - << 'EOF'
import re, sys, tomllib, yaml

def load(path):
    return list(yaml.safe_load_all(open(path)))

statefulset = load("ops/kubernetes/statefulset.yaml")[0]
service = load("ops/kubernetes/service.yaml")[0]
backup = {doc["kind"]: doc for doc in load("ops/kubernetes/ledger-backup.yaml")}
worker_config = tomllib.load(open("ops/palworker.production.toml", "rb"))
backup_config = tomllib.loads(backup["ConfigMap"]["data"]["palworker.toml"])
cronjob = backup["CronJob"]
pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
container = pod["containers"][0]
env = {e["name"]: e.get("value") for e in container.get("env", [])}
mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
volumes = {v["name"]: v for v in pod["volumes"]}
problems = []

worker_container = statefulset["spec"]["template"]["spec"]["containers"][0]
if container["image"] != worker_container["image"]:
    problems.append(f"image {container['image']!r} is not the worker's {worker_container['image']!r}")
if service["metadata"]["name"] != statefulset["spec"]["serviceName"]:
    problems.append("service.yaml is not the StatefulSet's serviceName")
# The workers are STATEFULSET-<i>.SERVICE for i in 0..PARTITIONS-1.
if (env.get("STATEFULSET"), env.get("SERVICE")) != (statefulset["metadata"]["name"], statefulset["spec"]["serviceName"]):
    problems.append(f"STATEFULSET {env.get('STATEFULSET')!r} / SERVICE {env.get('SERVICE')!r}: the worker pods are "
                    f"{statefulset['metadata']['name']}-<i>.{statefulset['spec']['serviceName']}")
if env.get("PARTITIONS") != str(statefulset["spec"]["replicas"]):
    problems.append(f"PARTITIONS {env.get('PARTITIONS')!r}: the StatefulSet has {statefulset['spec']['replicas']} "
                    "replicas, one per partition")
worker_port = worker_config["http"]["listen"].rsplit(":", 1)[1]
if env.get("WORKER_PORT") != worker_port or int(worker_port) not in [p["port"] for p in service["spec"]["ports"]]:
    problems.append(f"WORKER_PORT {env.get('WORKER_PORT')!r}: the worker listens on {worker_port}")
if not (env.get("KEEP") or "").isdigit() or int(env["KEEP"]) < 1:
    problems.append("KEEP must be a positive number")

# The admin token: the same file name as the worker's config, from the same Secret key.
token_file = backup_config["http"].get("admin_token_file")
if token_file != worker_config["http"].get("admin_token_file"):
    problems.append(f"http.admin_token_file {token_file!r} differs from the worker's")
secrets = volumes.get("secrets", {}).get("secret", {})
items = {i["path"]: i["key"] for i in secrets.get("items", [])}
if secrets.get("secretName") != "palworker" or \
        token_file != f"{mounts.get('secrets')}/{next((p for p, k in items.items() if k == 'admin-token'), '')}":
    problems.append(f"{token_file} is not the Secret's admin-token")
if set(items.values()) != {"admin-token"}:
    problems.append(f"the backup pod should see the admin token only, not {sorted(items.values())}")

# No ledger of its own: ledger.path on no volume (read-only root file system).
ledger_path = backup_config["ledger"]["path"]
if any(ledger_path == m or ledger_path.startswith(m.rstrip("/") + "/") for m in mounts.values()):
    problems.append(f"ledger.path {ledger_path} is on a writable volume: the CLI could create an empty ledger there")
if not container["securityContext"].get("readOnlyRootFilesystem"):
    problems.append("the backup container needs readOnlyRootFilesystem (ledger.path must not be creatable)")

script = container["args"][0]
for needle in ("PALWORKER__HTTP__LISTEN", "ledger export", "ledger import", "status --json", "inventory list --json",
               '"$PARTITIONS"', '"$STATEFULSET-$p.$SERVICE"', '/backup/ledger-p"$p"-*.jsonl'):
    if needle not in script:
        problems.append(f"the backup script no longer runs {needle!r}")
if mounts.get("backups") != "/backup" or volumes["backups"]["persistentVolumeClaim"]["claimName"] != backup["PersistentVolumeClaim"]["metadata"]["name"]:
    problems.append("the backups volume is not the PVC of ledger-backup.yaml at /backup")
if cronjob["spec"].get("concurrencyPolicy") != "Forbid":
    problems.append("two backups at once would delete each other's partial files: concurrencyPolicy Forbid")

alerts = open("ops/prometheus/alerts.yml").read()
if f'cronjob="{cronjob["metadata"]["name"]}"' not in alerts:
    problems.append(f"PalworkerLedgerBackupStale does not match CronJob {cronjob['metadata']['name']!r}")
if "ledger-backup.yaml" not in yaml.safe_load(open("ops/kubernetes/kustomization.yaml")).get("resources", []):
    problems.append("kustomization.yaml does not list ledger-backup.yaml")
if problems:
    print("\n".join(problems))
    sys.exit(1)
EOF
    check "partitions agree: configmap count = StatefulSet replicas = router count = backup PARTITIONS; admin_urls one per pod; index from the pod ordinal" python3 - << 'EOF'
import re, sys, tomllib, yaml
from urllib.parse import urlsplit

def load(path):
    return list(yaml.safe_load_all(open(path)))

config = tomllib.load(open("ops/palworker.production.toml", "rb"))
partitions = config.get("partitions", {})
count = partitions.get("count", 1)
statefulset = load("ops/kubernetes/statefulset.yaml")[0]
router_docs = {doc["kind"]: doc for doc in load("ops/kubernetes/router.yaml")}
router_config = tomllib.loads(router_docs["ConfigMap"]["data"]["palworker.toml"])
backup = {doc["kind"]: doc for doc in load("ops/kubernetes/ledger-backup.yaml")}
backup_env = {e["name"]: e.get("value") for e in
              backup["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]}
kustomization = yaml.safe_load(open("ops/kubernetes/kustomization.yaml"))
problems = []

replicas = statefulset["spec"]["replicas"]
if not isinstance(count, int) or count < 1:
    problems.append(f"[partitions] count {count!r} is not an integer >= 1")
if replicas != count:
    problems.append(f"statefulset.yaml has replicas {replicas}, [partitions] count is {count}: one pod per partition")
router_count = router_config.get("partitions", {}).get("count", 1)
listed = "router.yaml" in kustomization.get("resources", [])
if listed and router_count != count:
    problems.append(f"router.yaml's configuration has count {router_count}, the workers' {count}")
if backup_env.get("PARTITIONS") != str(count):
    problems.append(f"ledger-backup.yaml backs up PARTITIONS={backup_env.get('PARTITIONS')!r}, count is {count}")
index = partitions.get("index", 0)
if not isinstance(index, int) or not 0 <= index < count:
    problems.append(f"[partitions] index {index!r} is not in 0..{count - 1}")

# admin_urls: exactly one per partition, the pod of that ordinal in the headless Service.
urls = partitions.get("admin_urls", [])
port = config["http"]["listen"].rsplit(":", 1)[1]
want = [f"http://{statefulset['metadata']['name']}-{i}.{statefulset['spec']['serviceName']}:{port}" for i in range(count)]
if urls and len(urls) != count:
    problems.append(f"admin_urls has {len(urls)} entries, count is {count}")
if count > 1 and [u.rstrip("/") for u in urls] != want:
    problems.append(f"admin_urls {urls} are not the pods in index order {want}")

# Each pod's index is its ordinal (downward API, pod-index label).
pod = statefulset["spec"]["template"]["spec"]
container = pod["containers"][0]
env = {e["name"]: e for e in container.get("env", [])}
field = env.get("PALWORKER__PARTITIONS__INDEX", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
if field != "metadata.labels['apps.kubernetes.io/pod-index']":
    problems.append(f"PALWORKER__PARTITIONS__INDEX comes from {field!r}, not the pod-index label")
if [t["metadata"]["name"] for t in statefulset["spec"].get("volumeClaimTemplates", [])] != ["ledger"]:
    problems.append("the StatefulSet needs its volumeClaimTemplate `ledger` (one ledger volume per partition)")
if container["args"][-1] != "run":
    problems.append(f"the StatefulSet runs {container['args'][-1]!r}, not `run`")

# The routers' configuration: the workers' [amqp] (but the URL's user), [security], router_user.
amqp, router_amqp = dict(config["amqp"]), dict(router_config.get("amqp", {}))
worker_url, router_url = urlsplit(amqp.pop("url")), urlsplit(router_amqp.pop("url", ""))
if router_amqp != amqp:
    problems.append(f"router.yaml's [amqp] differs from the workers': {router_amqp} != {amqp}")
if (router_url.scheme, router_url.hostname, router_url.port, router_url.path) != \
        (worker_url.scheme, worker_url.hostname, worker_url.port, worker_url.path):
    problems.append(f"router.yaml's amqp.url is another broker or vhost than the workers'")
if router_config.get("security") != config.get("security"):
    problems.append("router.yaml's [security] differs from the workers' (the router validates publishers as they do)")
router_user = partitions.get("router_user")
if count > 1:
    if not router_user:
        problems.append("count > 1 with [security.publishers]: router_user is required")
    if router_config.get("partitions", {}).get("router_user") != router_user:
        problems.append("router.yaml's router_user differs from the workers'")
    if router_url.username != router_user:
        problems.append(f"the router connects as {router_url.username!r} (amqp.url), router_user is {router_user!r}")
    if router_user == worker_url.username:
        problems.append(f"router_user {router_user!r} is the workers' own broker user: any worker could forge publishers")
    if router_user in config.get("security", {}).get("publishers", {}):
        problems.append(f"router_user {router_user!r} must not be an event publisher")
for key in ("admin_urls", "index"):
    if key in router_config.get("partitions", {}):
        problems.append(f"router.yaml's configuration sets partitions.{key}, which only workers use")
if router_config.get("http", {}).get("admin_token_file") or router_config.get("http", {}).get("admin_token_env") \
        or router_config.get("credentials"):
    problems.append("router.yaml's configuration names an admin token or PAL credentials: the router needs neither")

# The Secret example: the routers' URL key, with router_user.
secret = load("ops/kubernetes/secret.example.yaml")[0]["stringData"]
if count > 1 and urlsplit(secret.get("router-amqp-url", "")).username != router_user:
    problems.append(f"secret.example.yaml's router-amqp-url is not for user {router_user!r}")

# The kit runs routers exactly when it is partitioned.
if count > 1 and not listed:
    problems.append("count > 1 but kustomization.yaml does not list router.yaml: nobody would fill the partition queues")
if count == 1 and listed:
    problems.append("count = 1 but kustomization.yaml lists router.yaml: `palworker route` refuses count 1 (nothing to route)")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"{count} partitions, {len(urls)} admin URLs, router user {router_user}")
EOF
    check "router.yaml: Deployment (2 replicas, route, the workers' image, probes, no volume, non-root), PDB on the router pods only" python3 - << 'EOF'
import sys, yaml

def load(path):
    return list(yaml.safe_load_all(open(path)))

docs = {doc["kind"]: doc for doc in load("ops/kubernetes/router.yaml")}
statefulset = load("ops/kubernetes/statefulset.yaml")[0]
problems = []
for kind in ("ConfigMap", "Service", "Deployment", "PodDisruptionBudget"):
    if kind not in docs:
        problems.append(f"router.yaml has no {kind}")
if problems:
    sys.exit("\n".join(problems))
deployment, pdb, service = docs["Deployment"], docs["PodDisruptionBudget"], docs["Service"]
spec = deployment["spec"]
pod = spec["template"]["spec"]
container = pod["containers"][0]
labels = spec["template"]["metadata"]["labels"]
worker_pod = statefulset["spec"]["template"]
worker_container = worker_pod["spec"]["containers"][0]

def selects(selector, pod_labels):
    return all(pod_labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())

if spec.get("replicas") != 2:
    problems.append(f"the router Deployment has replicas {spec.get('replicas')!r}, not 2")
if container["image"] != worker_container["image"]:
    problems.append(f"router image {container['image']!r} is not the workers' {worker_container['image']!r}")
if container.get("args", [])[-1:] != ["route"] or "--config" not in container.get("args", []):
    problems.append(f"the router runs {container.get('args')!r}, not `--config ... route`")
probes = {name: container.get(name, {}).get("httpGet", {}).get("path")
          for name in ("livenessProbe", "readinessProbe")}
if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}:
    problems.append(f"router probes {probes}: liveness /healthz, readiness /readyz")
volumes = {v["name"]: v for v in pod.get("volumes", [])}
for name, volume in volumes.items():
    if "persistentVolumeClaim" in volume or "secret" in volume:
        problems.append(f"the router mounts {name} ({sorted(volume)}): no ledger volume, no secret files")
if volumes.get("config", {}).get("configMap", {}).get("name") != docs["ConfigMap"]["metadata"]["name"]:
    problems.append("the router does not mount its own ConfigMap (router.yaml) as config")
env = {e["name"]: e for e in container.get("env", [])}
secret_key = env.get("PALWORKER__AMQP__URL", {}).get("valueFrom", {}).get("secretKeyRef", {})
if (secret_key.get("name"), secret_key.get("key")) != ("palworker", "router-amqp-url"):
    problems.append(f"the router's PALWORKER__AMQP__URL comes from {secret_key}, not Secret palworker key router-amqp-url")
security = pod.get("securityContext", {})
worker_security = worker_pod["spec"].get("securityContext", {})
for key in ("runAsNonRoot", "runAsUser", "runAsGroup"):
    if security.get(key) != worker_security.get(key):
        problems.append(f"router securityContext.{key} {security.get(key)!r} differs from the workers' {worker_security.get(key)!r}")
if not container.get("securityContext", {}).get("readOnlyRootFilesystem"):
    problems.append("the router container needs readOnlyRootFilesystem")
if not container.get("resources", {}).get("limits", {}).get("memory"):
    problems.append("the router has no memory limit")
if not selects(spec["selector"], labels):
    problems.append("the Deployment's selector does not select its own pods")
if labels.get("app.kubernetes.io/component") != "router":
    problems.append("router pods are not labelled app.kubernetes.io/component: router")

# The PDB: at least one router, and it must never select the workers (a
# budget on them would hold node drains for the single pod of a partition).
if pdb["spec"].get("minAvailable") != 1:
    problems.append(f"the PodDisruptionBudget has minAvailable {pdb['spec'].get('minAvailable')!r}, not 1")
if not selects(pdb["spec"]["selector"], labels):
    problems.append("the PodDisruptionBudget does not select the router pods")
if selects(pdb["spec"]["selector"], worker_pod["metadata"]["labels"]):
    problems.append("the PodDisruptionBudget selects the partition workers too")
if not all(labels.get(k) == v for k, v in service["spec"]["selector"].items()) \
        or all(worker_pod["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items()):
    problems.append("the router Service must select the router pods and not the workers")
# The workers' Service (admin_urls, backups) must not select the routers.
worker_service = load("ops/kubernetes/service.yaml")[0]
if all(labels.get(k) == v for k, v in worker_service["spec"]["selector"].items()):
    problems.append("service.yaml selects the router pods: palworker-<i>.palworker must be workers only")
if problems:
    print("\n".join(problems))
    sys.exit(1)
EOF
else
    warn "configmap and kustomization checks (no PyYAML)"
fi
if command -v kubectl > /dev/null; then
    check "kubectl kustomize ops/kubernetes builds; every container runs the kustomized image" python3 - << 'EOF'
import subprocess, sys, yaml
built = subprocess.run(["kubectl", "kustomize", "ops/kubernetes"], capture_output=True, text=True)
if built.returncode != 0:
    sys.exit(built.stderr)
kustomization = yaml.safe_load(open("ops/kubernetes/kustomization.yaml"))
image = next(f"{i['newName']}:{i['newTag']}" for i in kustomization["images"] if i["name"] == "palworker")
problems, kinds = [], []
for doc in yaml.safe_load_all(built.stdout):
    kinds.append(f"{doc['kind']}/{doc['metadata']['name']}")
    spec = doc.get("spec", {})
    template = spec.get("jobTemplate", {}).get("spec", spec).get("template", {})
    for container in template.get("spec", {}).get("containers", []):
        if container["image"] != image:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: image {container['image']}, not {image}")
wanted = ["StatefulSet/palworker"]
if "router.yaml" in kustomization.get("resources", []):
    wanted += ["Deployment/palworker-router", "PodDisruptionBudget/palworker-router"]
for want in wanted:
    if want not in kinds:
        problems.append(f"the build has no {want}")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(", ".join(kinds))
EOF
else
    warn "kubectl not installed: kustomize build not checked"
fi
if command -v kubernetes-validate > /dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate > /dev/null 2>&1; then
    check "kubernetes-validate --strict (API schemas)" \
        kubernetes-validate --strict --quiet \
        ops/kubernetes/configmap.yaml ops/kubernetes/service.yaml \
        ops/kubernetes/statefulset.yaml ops/kubernetes/secret.example.yaml \
        ops/kubernetes/ledger-backup.yaml ops/kubernetes/router.yaml
else
    warn "kubernetes-validate not available"
fi

# --------------------------------------------------------------------------
step "docker compose"
if docker compose version > /dev/null 2>&1; then
    check "docker compose -f docker/compose.yaml config" \
        docker compose -f docker/compose.yaml config --quiet
    check "docker compose -f docker/compose.yaml --profile partitioned config" \
        docker compose -f docker/compose.yaml --profile partitioned config --quiet
elif command -v docker-compose > /dev/null; then
    # docker-compose v1 predates the top-level `name`; check the rest.
    sed '/^name:/d' docker/compose.yaml > "$work_dir/compose.yaml"
    check "docker-compose (v1) config, without the top-level name" \
        docker-compose --project-directory docker -f "$work_dir/compose.yaml" config --quiet
    check "docker-compose (v1) --profile partitioned config, without the top-level name" \
        docker-compose --project-directory docker -f "$work_dir/compose.yaml" --profile partitioned config --quiet
else
    warn "neither docker compose nor docker-compose is installed"
fi
if [ "$have_yaml" = 1 ]; then
    check "compose profile partitioned: a router and partitions 0 and 1 of 2 in their own vhost, own ledgers, ports, simulators" python3 - << 'EOF'
import json, sys, yaml
from urllib.parse import unquote, urlsplit

compose = yaml.safe_load(open("docker/compose.yaml"))   # PyYAML resolves the << merge keys
services = compose["services"]
dev = json.load(open("docker/rabbitmq-dev-users.json"))
problems = []
PROFILE = "partitioned"
count = 2
workers = [f"palworker-p{i}" for i in range(count)]
for name in ("palworker-router", *workers, *(f"sim-p{i}" for i in range(count))):
    if name not in services:
        problems.append(f"no service {name}")
    elif services[name].get("profiles") != [PROFILE]:
        problems.append(f"{name} is not in (only) the profile {PROFILE!r}")
for name in ("rabbitmq", "palworker", "sim", "prometheus"):
    if services.get(name, {}).get("profiles"):
        problems.append(f"the default service {name} has profiles {services[name]['profiles']}")
if problems:
    sys.exit("\n".join(problems))

def env(name):
    return {k: str(v) for k, v in (services[name].get("environment") or {}).items()}

router_env = env("palworker-router")
router_url = urlsplit(router_env.get("PALWORKER__AMQP__URL", ""))
vhost = unquote(router_url.path[1:]) or "/"
if vhost == "/":
    problems.append("the partitioned services share vhost / with the single-process worker: it and the router would compete for palworker.events")
if {"name": vhost} not in dev.get("vhosts", []):
    problems.append(f"vhost {vhost!r} is not in docker/rabbitmq-dev-users.json")
if services["palworker-router"].get("command", [])[-1:] != ["route"]:
    problems.append(f"palworker-router runs {services['palworker-router'].get('command')!r}, not route")
router_user = router_env.get("PALWORKER__PARTITIONS__ROUTER_USER")
if router_url.username != router_user:
    problems.append(f"the router connects as {router_url.username!r}, ROUTER_USER is {router_user!r}")
if not any(u["name"] == router_user for u in dev["users"]):
    problems.append(f"no dev user {router_user!r}")

def port(name):
    return env(name).get("PALWORKER__HTTP__LISTEN", "").rsplit(":", 1)[-1]

def published(name):
    return [str(p) for p in services[name].get("ports", [])]

ports, volumes = {}, {}
for name in ("palworker-router", *workers):
    e = env(name)
    if e.get("PALWORKER__PARTITIONS__COUNT") != str(count):
        problems.append(f"{name}: PALWORKER__PARTITIONS__COUNT {e.get('PALWORKER__PARTITIONS__COUNT')!r}, not {count}")
    if e.get("PALWORKER__PARTITIONS__ROUTER_USER") != router_user:
        problems.append(f"{name}: another ROUTER_USER than the router's user")
    if unquote(urlsplit(e.get("PALWORKER__AMQP__URL", "")).path[1:]) != vhost:
        problems.append(f"{name} is not in vhost {vhost!r}")
    if not port(name).isdigit() or port(name) in ports:
        problems.append(f"{name}: http port {port(name)!r} missing or shared with {ports.get(port(name))}")
    ports[port(name)] = name
    if f"127.0.0.1:{port(name)}:{port(name)}" not in published(name):
        problems.append(f"{name}: port {port(name)} is not published on 127.0.0.1 ({published(name)})")
    ledger = [v for v in services[name].get("volumes", []) if str(v).endswith(":/var/lib/palworker")]
    if name == "palworker-router":
        if ledger:
            problems.append("palworker-router has a ledger volume: the router keeps no state")
        continue
    if len(ledger) != 1 or ledger[0].split(":")[0] not in (compose.get("volumes") or {}):
        problems.append(f"{name}: no named ledger volume of its own")
    elif ledger[0] in volumes.values() or ledger[0].split(":")[0] == "palworker-ledger":
        problems.append(f"{name}: its ledger volume is shared")
    volumes[name] = ledger[0]
for i, name in enumerate(workers):
    e = env(name)
    if e.get("PALWORKER__PARTITIONS__INDEX") != str(i):
        problems.append(f"{name}: PALWORKER__PARTITIONS__INDEX {e.get('PALWORKER__PARTITIONS__INDEX')!r}, not {i}")
    if urlsplit(e.get("PALWORKER__AMQP__URL", "")).username == router_user:
        problems.append(f"{name} connects as the router user")
    if services[f"sim-p{i}"].get("network_mode") != f"service:{name}":
        problems.append(f"sim-p{i} is not on {name}'s loopback (network_mode service:{name})")
    admin_urls = json.loads(e.get("PALWORKER__PARTITIONS__ADMIN_URLS", "[]"))
    want = [f"http://{w}:{port(w)}" for w in workers]
    if admin_urls != want:
        problems.append(f"{name}: ADMIN_URLS {admin_urls}, expected {want}")
    if services[name].get("command") not in (None, ["--config", "/etc/palworker/palworker.toml", "run"]):
        problems.append(f"{name} does not run `run`")
default_port = "9464"
if default_port in ports:
    problems.append(f"port {default_port} is the single-process worker's")
if problems:
    print("\n".join(problems))
    sys.exit(1)
EOF
else
    warn "compose profile checks (no PyYAML)"
fi

# --------------------------------------------------------------------------
# A throwaway RabbitMQ node for --with-rabbitmq and --with-worker: its own data
# directory, ports 5797/25797 on loopback, no plugins. Never the local broker.
rabbitmq_bin=/usr/lib/rabbitmq/bin
if [ ! -x "$rabbitmq_bin/rabbitmq-server" ] && command -v rabbitmq-server > /dev/null; then
    rabbitmq_bin="$(dirname "$(command -v rabbitmq-server)")"
fi
node_name="palworkercheck$$@localhost"

# node_run NODE_DIR COMMAND...: COMMAND with the node's environment.
node_run() {
    local node_dir="$1"
    shift
    (
        export HOME="$node_dir/home" RABBITMQ_NODENAME="$node_name" RABBITMQ_NODE_PORT=5797 \
            RABBITMQ_DIST_PORT=25797 RABBITMQ_MNESIA_BASE="$node_dir/mnesia" \
            RABBITMQ_LOG_BASE="$node_dir/log" RABBITMQ_LOGS="$node_dir/log/node.log" \
            RABBITMQ_CONFIG_FILE="$node_dir/rabbitmq.conf" RABBITMQ_CONFIG_FILES="$node_dir/conf.d" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$node_dir/enabled_plugins" RABBITMQ_CONF_ENV_FILE=/dev/null \
            RABBITMQ_PID_FILE="$node_dir/pid" RABBITMQ_FEATURE_FLAGS_FILE="$node_dir/feature_flags" \
            RABBITMQ_PLUGINS_EXPAND_DIR="$node_dir/plugins" RABBITMQ_QUORUM_DIR="$node_dir/quorum" \
            ERL_CRASH_DUMP="$node_dir/erl_crash.dump" ERL_EPMD_ADDRESS=127.0.0.1
        cd "$node_dir" && "$@"
    )
}

node_ctl() {
    local node_dir="$1"
    shift
    node_run "$node_dir" "$rabbitmq_bin/rabbitmqctl" -n "$node_name" -q "$@"
}

# node_start NODE_DIR DEFINITIONS_DIR [BROKER_CONF]: boot and wait until it
# serves; BROKER_CONF (settings for a node without plugins) is appended to the
# node's rabbitmq.conf.
node_start() {
    local node_dir="$1" definitions="$2" broker_conf="${3:-/dev/null}"
    mkdir -p "$node_dir/home" "$node_dir/mnesia" "$node_dir/log" "$node_dir/conf.d"
    echo '[].' > "$node_dir/enabled_plugins"
    {
        printf 'listeners.tcp.default = 127.0.0.1:5797\nload_definitions = %s\n' "$definitions"
        cat "$broker_conf"
    } > "$node_dir/rabbitmq.conf"
    node_run "$node_dir" "$rabbitmq_bin/rabbitmq-server" > "$node_dir/server.out" 2>&1 &
    echo $! > "$node_dir/server.pid"
    for _ in $(seq 1 90); do
        if node_ctl "$node_dir" await_startup > /dev/null 2>&1; then
            return 0
        fi
        kill -0 "$(cat "$node_dir/server.pid")" 2> /dev/null || break
        sleep 1
    done
    echo "RabbitMQ node did not start:"
    tail -n 20 "$node_dir/server.out"
    return 1
}

node_stop() {
    local node_dir="$1" server_pid
    [ -f "$node_dir/server.pid" ] || return 0
    server_pid="$(cat "$node_dir/server.pid")"
    node_ctl "$node_dir" stop > /dev/null 2>&1 || kill "$server_pid" 2> /dev/null
    for _ in $(seq 1 30); do
        kill -0 "$server_pid" 2> /dev/null || break
        sleep 1
    done
    rm -f "$node_dir/server.pid"
}

# Definitions directories as production and the compose stack load them, and
# their broker settings: ops/rabbitmq/rabbitmq.conf whole, the compose file's
# max_message_size (its other keys need plugins the throwaway node lacks).
prepare_definitions() {
    mkdir -p "$work_dir/defs-production" "$work_dir/defs-compose" "$work_dir/defs-partitioned"
    cp ops/rabbitmq/definitions.json "$work_dir/defs-production/10-palworker.json"
    # The partitioned kit's broker: the definitions, then the topology of 3 partitions.
    cp ops/rabbitmq/definitions.json "$work_dir/defs-partitioned/10-palworker.json"
    cp ops/rabbitmq/topology-3-partitions.json "$work_dir/defs-partitioned/20-topology.json"
    cp ops/rabbitmq/definitions.json "$work_dir/defs-compose/10-palworker.json"
    cp docker/rabbitmq-dev-users.json "$work_dir/defs-compose/20-dev-users.json"
    cp ops/rabbitmq/rabbitmq.conf "$work_dir/broker-production.conf"
    grep '^max_message_size' docker/rabbitmq.conf > "$work_dir/broker-compose.conf"
}

# definitions_check DEFINITIONS_DIR BROKER_CONF EXPECTATION...: boot a node with
# them, check the topology, the events queue's policy, max_message_size and the
# logins ("user:password:ok" or "user:password:refused").
definitions_check() {
    local definitions="$1" broker_conf="$2" node_dir status=0 queues bindings expected expectation
    local user rest password want got size_want size_got
    shift 2
    node_dir="$(mktemp -d "$work_dir/node.XXXX")"
    if ! node_start "$node_dir" "$definitions" "$broker_conf"; then
        node_stop "$node_dir"
        return 1
    fi
    queues="$(node_ctl "$node_dir" list_queues -p / name type durable policy 2>&1)"
    bindings="$(node_ctl "$node_dir" list_bindings -p / source_name destination_name routing_key 2>&1)"
    # The policy applies to the events queue, which exists already (created from
    # the definitions), and to nothing else.
    for expected in $'palworker.events\tquorum\ttrue\tpalworker-events-delivery-limit' \
        $'palworker.dead\tquorum\ttrue\t'; do
        grep -q "^$expected\$" <<< "$queues" || { echo "queue missing: $expected"; status=1; }
    done
    size_want="$(sed -n 's/^max_message_size *= *\([0-9]*\) *$/{ok,\1}/p' "$broker_conf")"
    size_got="$(node_ctl "$node_dir" eval 'application:get_env(rabbit, max_message_size).' 2>&1)"
    [ -n "$size_want" ] && [ "$size_got" = "$size_want" ] \
        || { echo "max_message_size: expected $size_want, got $size_got"; status=1; }
    for expected in $'pal.lifecycle\tpalworker.events\thr.#' $'pal.lifecycle\tpalworker.events\tproject.#' \
        $'pal.lifecycle\tpalworker.events\tpartner.#' $'pal.lifecycle.dlx\tpalworker.dead'; do
        grep -q "$expected" <<< "$bindings" || { echo "binding missing: $expected"; status=1; }
    done
    for expectation in "$@"; do
        # "vhost:NAME:USER": USER has permissions in vhost NAME.
        if [ "${expectation%%:*}" = vhost ]; then
            rest="${expectation#vhost:}"
            node_ctl "$node_dir" list_user_permissions "${rest#*:}" 2>&1 | grep -q "^${rest%%:*}"$'\t' \
                || { echo "user ${rest#*:} has no permissions in vhost ${rest%%:*}"; status=1; }
            continue
        fi
        user="${expectation%%:*}" rest="${expectation#*:}"
        password="${rest%:*}" want="${rest##*:}"
        if node_ctl "$node_dir" authenticate_user "$user" "$password" > /dev/null 2>&1; then
            got=ok
        else
            got=refused
        fi
        [ "$got" = "$want" ] || { echo "login $user: expected $want, got $got"; status=1; }
    done
    node_stop "$node_dir"
    return $status
}

# partitions_check DEFINITIONS_DIR BROKER_CONF COUNT: boot a node with the
# definitions and a `palworker topology --partitions COUNT` file; the partition
# queues are quorum queues with single active consumer, their own delivery
# limit and dead-letter exchange and no policy, bound by routing key p<i>; the
# events queue keeps its policy.
partitions_check() {
    local definitions="$1" broker_conf="$2" count="$3" node_dir status=0 queues bindings i
    node_dir="$(mktemp -d "$work_dir/node.XXXX")"
    if ! node_start "$node_dir" "$definitions" "$broker_conf"; then
        node_stop "$node_dir"
        return 1
    fi
    queues="$(node_ctl "$node_dir" list_queues -p / --formatter json name type durable policy arguments 2>&1)"
    bindings="$(node_ctl "$node_dir" list_bindings -p / source_name destination_name routing_key 2>&1)"
    python3 - "$count" "$queues" << 'EOF' || status=1
import json, sys
count, queues = int(sys.argv[1]), {q["name"]: q for q in json.loads(sys.argv[2])}
problems = []
for i in range(count):
    q = queues.get(f"palworker.events.p{i}")
    if q is None:
        problems.append(f"queue palworker.events.p{i} missing")
        continue
    # rabbitmqctl's JSON lists each argument as [name, AMQP type, value].
    arguments = {argument[0]: argument[-1] for argument in q["arguments"]}
    want = {"x-queue-type": "quorum", "x-single-active-consumer": True, "x-delivery-limit": 20,
            "x-dead-letter-exchange": "pal.lifecycle.dlx"}
    if q["type"] != "quorum" or not q["durable"] or arguments != want or q.get("policy") not in ("", None):
        problems.append(f"palworker.events.p{i}: {q}")
if queues.get("palworker.events", {}).get("policy") != "palworker-events-delivery-limit":
    problems.append(f"palworker.events lost its policy: {queues.get('palworker.events')}")
print("\n".join(problems))
sys.exit(1 if problems else 0)
EOF
    for i in $(seq 0 $((count - 1))); do
        grep -q $'^pal.lifecycle.partitions\tpalworker.events.p'"$i"$'\tp'"$i"'$' <<< "$bindings" \
            || { echo "binding missing: pal.lifecycle.partitions -> palworker.events.p$i (p$i)"; status=1; }
    done
    node_ctl "$node_dir" authenticate_user palworker-router dev-only-palworker-router > /dev/null 2>&1 \
        && { echo "palworker-router can log in with the dev password"; status=1; }
    node_stop "$node_dir"
    return $status
}

if [ "$with_rabbitmq" = 1 ]; then
    step "RabbitMQ definitions (throwaway node, never the local broker)"
    if [ ! -x "$rabbitmq_bin/rabbitmq-server" ]; then
        fail "--with-rabbitmq: rabbitmq-server is not installed"
    else
        prepare_definitions
        check "ops/rabbitmq/definitions.json and rabbitmq.conf load (policy, max_message_size); placeholder users cannot log in" \
            definitions_check "$work_dir/defs-production" "$work_dir/broker-production.conf" \
            palworker:dev-only-palworker:refused hr-system:dev-only-hr-system:refused \
            palworker-router:dev-only-palworker-router:refused
        check "compose definitions (ops + dev users) and max_message_size load; dev-only logins work; vhost partitioned" \
            definitions_check "$work_dir/defs-compose" "$work_dir/broker-compose.conf" \
            palworker:dev-only-palworker:ok hr-system:dev-only-hr-system:ok \
            project-system:dev-only-project-system:ok admin:dev-only-admin:ok palworker:wrong:refused \
            palworker-router:dev-only-palworker-router:ok \
            vhost:partitioned:palworker-router vhost:partitioned:palworker vhost:partitioned:hr-system \
            vhost:partitioned:project-system
        check "definitions.json + topology-3-partitions.json load: partition queues (quorum, single active consumer, delivery limit), bindings p0..p2" \
            partitions_check "$work_dir/defs-partitioned" "$work_dir/broker-production.conf" 3
    fi
fi

# --------------------------------------------------------------------------
# --with-worker BINARY: the compose stack's files, run for real on loopback:
# the throwaway node with the compose definitions, `palworker sim` with
# docker/sim-clients.json, `palworker run` with docker/palworker.compose.toml
# (endpoints, ports and ledger overridden by PALWORKER__* variables), and the
# sample events of docker/dev-events published as their publishers.
smoke_dir="$work_dir/smoke"
sim_pid=""
worker_pid=""

http_get() {
    python3 -c 'import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
except Exception as error:
    sys.exit(str(error))' "$1"
}

# wait_for SECONDS COMMAND...: until COMMAND succeeds.
wait_for() {
    local seconds="$1"
    shift
    for _ in $(seq 1 "$((seconds * 2))"); do
        "$@" > /dev/null 2>&1 && return 0
        sleep 0.5
    done
    return 1
}

refused() { ! "$@" > /dev/null 2>&1; }

smoke_pw() { "$worker_binary" --config docker/palworker.compose.toml "$@"; }

smoke_publish_as() { # USER PASSWORD FILE [publish options...]
    local user="$1" password="$2" file="$3"
    shift 3
    PALWORKER__AMQP__URL="amqp://$user:$password@127.0.0.1:5797/%2f" smoke_pw publish "$@" "$file"
}

smoke_both_done() {
    local states
    states="$(smoke_pw status --json | python3 -c 'import json, sys
rows = [json.loads(line) for line in sys.stdin if line.strip()]
print(sorted((r["event_id"], r["op"], r["state"]) for r in rows))')"
    [ "$states" = "[('dev-assignment-0001', 'link', 'done'), ('dev-departure-0001', 'remove', 'done')]" ]
}

smoke_dead_lettered() {
    http_get http://127.0.0.1:19797/metrics \
        | grep -q '^palworker_dead_letters_total{reason="publisher_not_allowed"} 1$'
}

smoke_wait_poison_set_aside() {
    wait_for 90 smoke_poison_set_aside && return 0
    echo "after 90 s (queue, messages):"
    node_ctl "$smoke_dir/node" list_queues -p / name messages policy
    grep -c 'Broker connection lost' "$smoke_dir/worker.log" | sed 's/$/ broker sessions lost/'
    return 1
}

# A message whose content_type is not UTF-8, which the worker's AMQP client
# cannot parse, published on the node itself (no AMQP client would send it).
smoke_publish_poison() {
    local result
    result="$(node_ctl "$smoke_dir/node" eval 'rabbit_basic:publish(
        rabbit_misc:r(<<"/">>, exchange, <<"pal.lifecycle">>), <<"hr.employee.departed">>,
        {list_to_atom("P_basic"), <<"application/json", 255, 254>>, undefined, undefined, 2,
         undefined, undefined, undefined, undefined, <<"check-poison">>, undefined, undefined,
         undefined, undefined, undefined},
        <<"{}">>).' 2>&1)"
    [ "$result" = ok ] || { echo "$result"; return 1; }
}

# The poison message is in palworker.dead beside the publisher_not_allowed one,
# palworker.events is empty, and the worker consumes again.
smoke_poison_set_aside() {
    local queues
    queues="$(node_ctl "$smoke_dir/node" list_queues -p / name messages)"
    grep -q $'^palworker.dead\t2$' <<< "$queues" && grep -q $'^palworker.events\t0$' <<< "$queues" \
        && http_get http://127.0.0.1:19797/readyz
}

smoke_drain() {
    local status
    kill -TERM "$worker_pid"
    wait "$worker_pid"
    status=$?
    worker_pid=""
    if [ "$status" != 0 ]; then
        echo "exit status $status"
        tail -n 5 "$smoke_dir/worker.log"
        return 1
    fi
}

# smoke_production_loads CONFIG: the configuration loads with every index
# below its [partitions] count, and refuses the index equal to the count.
smoke_production_loads() {
    local count i
    count="$(python3 -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb")).get("partitions", {}).get("count", 1))' "$1")" || return 1
    for i in $(seq 0 $((count - 1))); do
        PALWORKER__PARTITIONS__INDEX="$i" "$worker_binary" --config "$1" topology > /dev/null || return 1
    done
    if PALWORKER__PARTITIONS__INDEX="$count" "$worker_binary" --config "$1" topology > /dev/null 2>&1; then
        echo "index $count (= count) was accepted"
        return 1
    fi
}

# smoke_topology CONFIG EXPECTED N: `palworker topology --partitions N` prints
# the exchanges, queues and bindings of EXPECTED (order aside) and no users
# or permissions.
smoke_topology() {
    local printed
    printed="$("$worker_binary" --config "$1" topology --partitions "$3")" || return 1
    python3 - "$2" "$printed" << 'EOF'
import json, sys
expected, printed = json.load(open(sys.argv[1])), json.loads(sys.argv[2])
problems = [f"prints {key}: users and permissions are site-specific" for key in printed
            if key in ("users", "permissions", "topic_permissions")]
for kind in ("vhosts", "exchanges", "queues", "bindings"):
    canon = lambda items: sorted(json.dumps(o, sort_keys=True) for o in items)
    want, got = canon(expected.get(kind, [])), canon(printed.get(kind, []))
    problems += [f"{kind}: missing {o}" for o in sorted(set(want) - set(got))]
    problems += [f"{kind}: unexpected {o}" for o in sorted(set(got) - set(want))]
print("\n".join(problems))
sys.exit(1 if problems else 0)
EOF
}

smoke_cleanup() {
    if [ -n "$worker_pid" ]; then kill "$worker_pid" 2> /dev/null; wait "$worker_pid" 2> /dev/null; fi
    if [ -n "$sim_pid" ]; then kill "$sim_pid" 2> /dev/null; wait "$sim_pid" 2> /dev/null; fi
    worker_pid="" sim_pid=""
    node_stop "$smoke_dir/node"
}

if [ -n "$worker_binary" ]; then
    step "worker smoke test ($worker_binary, throwaway node, loopback only)"
    if [ ! -x "$rabbitmq_bin/rabbitmq-server" ]; then
        fail "--with-worker: rabbitmq-server is not installed"
    elif [ ! -x "$worker_binary" ]; then
        fail "--with-worker: $worker_binary is not an executable"
    else
        mkdir -p "$smoke_dir/node" "$smoke_dir/secrets"
        trap 'smoke_cleanup; rm -rf "$work_dir"' EXIT
        prepare_definitions
        export PALWORKER__AMQP__URL='amqp://palworker:dev-only-palworker@127.0.0.1:5797/%2f' \
            PALWORKER__PAL__ARM_ENDPOINT=http://127.0.0.1:18797 \
            PALWORKER__PAL__AUTHORITY=http://127.0.0.1:18797 \
            PALWORKER__LEDGER__PATH="$smoke_dir/ledger" \
            PALWORKER__HTTP__LISTEN=127.0.0.1:19797 \
            PALWORKER__AMQP__RECONNECT_INITIAL=200ms \
            PALWORKER__AMQP__RECONNECT_MAX=1s \
            PALWORKER_DEV_CLIENT_SECRET=dev-only-secret \
            PALWORKER_ADMIN_TOKEN=dev-only-admin-token

        check "throwaway RabbitMQ node with the compose definitions" \
            node_start "$smoke_dir/node" "$work_dir/defs-compose" "$work_dir/broker-compose.conf"
        "$worker_binary" sim --listen 127.0.0.1:18797 --clients docker/sim-clients.json \
            > "$smoke_dir/sim.log" 2>&1 &
        sim_pid=$!
        check "palworker sim serves docker/sim-clients.json" \
            wait_for 20 http_get http://127.0.0.1:18797/_sim/healthz
        # Started directly, not through the smoke_pw function, so that $! is the
        # worker itself and SIGTERM reaches it.
        "$worker_binary" --config docker/palworker.compose.toml run > "$smoke_dir/worker.log" 2>&1 &
        worker_pid=$!
        if wait_for 30 http_get http://127.0.0.1:19797/readyz; then
            pass "palworker run with docker/palworker.compose.toml is ready (declared the topology as user palworker)"
        else
            fail "palworker run with docker/palworker.compose.toml is not ready"
            tail -n 20 "$smoke_dir/worker.log" | sed 's/^/        /'
        fi

        check "project-system publishes dev-events/01 with --user-id project-system" \
            smoke_publish_as project-system dev-only-project-system \
            docker/dev-events/01-project-assignment-started.json --user-id project-system
        check "hr-system publishes dev-events/02 with --user-id hr-system" \
            smoke_publish_as hr-system dev-only-hr-system \
            docker/dev-events/02-hr-employee-departed.json --user-id hr-system
        check "the sample events link, then remove, in the simulator (status --json)" \
            wait_for 30 smoke_both_done

        sed 's/dev-departure-0001/dev-departure-no-user-id/' docker/dev-events/02-hr-employee-departed.json \
            > "$smoke_dir/no-user-id.json"
        smoke_publish_as hr-system dev-only-hr-system "$smoke_dir/no-user-id.json" > /dev/null 2>&1
        check "an event without user_id is dead-lettered as publisher_not_allowed (palworker writes to the DLX)" \
            wait_for 20 smoke_dead_lettered
        check "RabbitMQ refuses hr-system publishing a project.* routing key (topic permission)" \
            refused smoke_publish_as hr-system dev-only-hr-system \
            docker/dev-events/01-project-assignment-started.json --user-id hr-system
        check "RabbitMQ refuses the palworker user publishing events (topic permission: only palworker.* results)" \
            refused smoke_pw publish --user-id palworker "$smoke_dir/no-user-id.json"

        # The events queue came from the definitions, so its delivery limit is
        # the policy's (reconnect backoff shortened above: 21 deliveries in
        # about 20 s instead of 8 minutes).
        if smoke_publish_poison > "$smoke_dir/poison.out" 2>&1; then
            check "a message the worker cannot parse is set aside by the delivery-limit policy; the worker consumes again" \
                smoke_wait_poison_set_aside
        else
            warn "could not publish a poison message on the node: $(head -n 1 "$smoke_dir/poison.out")"
        fi

        http_get http://127.0.0.1:19797/metrics > "$smoke_dir/metrics.txt" 2>&1
        check "every metric the dashboard and the alerts query is exported" python3 -c '
import re, sys
exported = {line.split("{")[0].split(" ")[0] for line in open(sys.argv[1]) if line[:1].isalpha()}
used = set()
for path in ("ops/grafana/palworker-dashboard.json", "ops/prometheus/alerts.yml"):
    used |= set(re.findall(r"\b(?:palworker|process)_[a-z0-9_]+", open(path).read()))
histograms = {name[: -len("_bucket")] for name in exported if name.endswith("_bucket")}
missing = sorted(name for name in used if name not in exported and name not in histograms)
if missing:
    sys.exit(f"not exported: {missing}")
' "$smoke_dir/metrics.txt"

        # The production example loads, with its /run/secrets files faked.
        if command -v openssl > /dev/null; then
            openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=palworker-check \
                -keyout "$smoke_dir/secrets/key.pem" -out "$smoke_dir/secrets/cert.pem" > /dev/null 2>&1
            cat "$smoke_dir/secrets/cert.pem" "$smoke_dir/secrets/key.pem" > "$smoke_dir/secrets/automation.pem"
        else
            printf -- '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n' \
                > "$smoke_dir/secrets/automation.pem"
        fi
        echo check-admin-token > "$smoke_dir/secrets/admin-token"
        sed "s|\"/run/secrets/|\"$smoke_dir/secrets/|" ops/palworker.production.toml > "$smoke_dir/production.toml"
        # Loading and checking the whole configuration (secret files, [partitions])
        # as each pod of the StatefulSet gets it: `topology` needs no ledger and
        # no running worker (`status` would ask the pods' admin_urls).
        check "ops/palworker.production.toml loads as every partition (PALWORKER__PARTITIONS__INDEX 0..count-1)" \
            smoke_production_loads "$smoke_dir/production.toml"
        check "palworker topology --partitions 3 (production config) prints ops/rabbitmq/topology-3-partitions.json" \
            smoke_topology "$smoke_dir/production.toml" ops/rabbitmq/topology-3-partitions.json 3

        # Not through `check`: its command substitution is a subshell, which
        # cannot wait for the worker it did not start.
        if smoke_drain > "$smoke_dir/drain.out" 2>&1; then
            pass "SIGTERM drains and exits 0"
        else
            fail "SIGTERM drains and exits 0"
            sed 's/^/        /' "$smoke_dir/drain.out"
        fi
        smoke_cleanup
        trap 'rm -rf "$work_dir"' EXIT
    fi
fi

# --------------------------------------------------------------------------
printf '\n%d passed, %d failed\n' "$passed" "$failures"
if [ "$warnings" -gt 0 ]; then
    printf '(%d check(s) skipped, see "skip" lines above)\n' "$warnings"
fi
[ "$failures" = 0 ]
