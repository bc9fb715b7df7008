#!/usr/bin/env bash
# Validate the operations and deployment files under ops/ and docker/.
#
#   ops/check.sh                    # the checks below; exits non-zero on any failure
#   ops/check.sh --with-rabbitmq    # also boot a throwaway RabbitMQ node (needs a
#                                   # local rabbitmq-server install) with the
#                                   # definitions and the broker settings: topology,
#                                   # the events queue's policy, max_message_size, logins
#   ops/check.sh --with-worker target/debug/palworker
#                                   # also run the compose stack's files for real on
#                                   # loopback: throwaway node, `palworker sim`,
#                                   # `palworker run`, the sample events, broker
#                                   # permissions, a poison message set aside by the
#                                   # delivery-limit policy, the production config,
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
#   - ops/kubernetes/configmap.yaml carries ops/palworker.production.toml verbatim
#   - the ledger backup CronJob (ops/kubernetes/ledger-backup.yaml) reaches the
#     worker as deployed: same image, the pod's name in the headless Service,
#     its port, the admin token only, no ledger of its own, listed in
#     kustomization.yaml and named by PalworkerLedgerBackupStale
#   - Kubernetes manifests against the API schemas (kubernetes-validate, if it
#     can be installed), docker/compose.yaml with docker compose (or the
#     docker-compose v1 fallback) when available
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
    check "ledger-backup.yaml reaches the worker as deployed (image, address, admin token, no ledger of its own)" python3 - << 'EOF'
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
want_host = f"{statefulset['metadata']['name']}-0.{statefulset['spec']['serviceName']}"
if service["metadata"]["name"] != statefulset["spec"]["serviceName"]:
    problems.append("service.yaml is not the StatefulSet's serviceName")
if env.get("WORKER_HOST") != want_host:
    problems.append(f"WORKER_HOST {env.get('WORKER_HOST')!r}, the worker pod is {want_host!r}")
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
for needle in ("PALWORKER__HTTP__LISTEN", "ledger export", "ledger import", "status --json", "inventory list --json"):
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
else
    warn "configmap and kustomization checks (no PyYAML)"
fi
if command -v kubernetes-validate > /dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate > /dev/null 2>&1; then
    check "kubernetes-validate --strict (API schemas)" \
        kubernetes-validate --strict --quiet \
        ops/kubernetes/configmap.yaml ops/kubernetes/service.yaml \
        ops/kubernetes/statefulset.yaml ops/kubernetes/secret.example.yaml \
        ops/kubernetes/ledger-backup.yaml
else
    warn "kubernetes-validate not available"
fi

# --------------------------------------------------------------------------
step "docker compose"
if docker compose version > /dev/null 2>&1; then
    check "docker compose -f docker/compose.yaml config" \
        docker compose -f docker/compose.yaml config --quiet
elif command -v docker-compose > /dev/null; then
    # docker-compose v1 predates the top-level `name`; check the rest.
    sed '/^name:/d' docker/compose.yaml > "$work_dir/compose.yaml"
    check "docker-compose (v1) config, without the top-level name" \
        docker-compose --project-directory docker -f "$work_dir/compose.yaml" config --quiet
else
    warn "neither docker compose nor docker-compose is installed"
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
    mkdir -p "$work_dir/defs-production" "$work_dir/defs-compose"
    cp ops/rabbitmq/definitions.json "$work_dir/defs-production/10-palworker.json"
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

if [ "$with_rabbitmq" = 1 ]; then
    step "RabbitMQ definitions (throwaway node, never the local broker)"
    if [ ! -x "$rabbitmq_bin/rabbitmq-server" ]; then
        fail "--with-rabbitmq: rabbitmq-server is not installed"
    else
        prepare_definitions
        check "ops/rabbitmq/definitions.json and rabbitmq.conf load (policy, max_message_size); placeholder users cannot log in" \
            definitions_check "$work_dir/defs-production" "$work_dir/broker-production.conf" \
            palworker:dev-only-palworker:refused hr-system:dev-only-hr-system:refused
        check "compose definitions (ops + dev users) and max_message_size load; dev-only logins work" \
            definitions_check "$work_dir/defs-compose" "$work_dir/broker-compose.conf" \
            palworker:dev-only-palworker:ok hr-system:dev-only-hr-system:ok \
            project-system:dev-only-project-system:ok admin:dev-only-admin:ok palworker:wrong:refused
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
        check "ops/palworker.production.toml loads (status on an empty ledger)" \
            env PALWORKER__LEDGER__PATH="$smoke_dir/production-ledger" \
            "$worker_binary" --config "$smoke_dir/production.toml" status

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
