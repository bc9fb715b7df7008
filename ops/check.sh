#!/usr/bin/env bash
# Validate the operations and deployment files under ops/ and docker/.
#
#   ops/check.sh                    # the checks below; exits non-zero on any failure
#   ops/check.sh --with-rabbitmq    # also boot a throwaway RabbitMQ node (needs a
#                                   # local rabbitmq-server install) and load the
#                                   # definitions into it
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
#   - ops/kubernetes/configmap.yaml carries ops/palworker.production.toml verbatim
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
for argument in "$@"; do
    case "$argument" in
        --with-rabbitmq) with_rabbitmq=1 ;;
        -h | --help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "usage: ops/check.sh [--with-rabbitmq]" >&2; exit 2 ;;
    esac
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
}
ALLOWED = {**SPEC_METRICS, **EXTRA_METRICS}
LABEL_VALUES = {
    "outcome": {"accepted", "duplicate", "dead_lettered", "held",
                "done", "noop", "failed", "cancelled", "manual"},
    "op": {"remove", "link", "update"},
    "reason": {"throttled", "server_error", "timeout", "connection", "token", "unauthorized",
               "invalid_json", "not_cloudevent", "unsupported_specversion", "missing_attribute",
               "invalid_attribute", "unknown_type", "invalid_data", "missing_field", "invalid_field",
               "unsupported_content_type", "too_large", "publisher_not_allowed"},
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
    for label, value in re.findall(r'\b(outcome|op|reason)\s*=\s*\\?"([^"\\]*)\\?"', text):
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
else
    warn "configmap and kustomization checks (no PyYAML)"
fi
if command -v kubernetes-validate > /dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate > /dev/null 2>&1; then
    check "kubernetes-validate --strict (API schemas)" \
        kubernetes-validate --strict --quiet \
        ops/kubernetes/configmap.yaml ops/kubernetes/service.yaml \
        ops/kubernetes/statefulset.yaml ops/kubernetes/secret.example.yaml
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
if [ "$with_rabbitmq" = 1 ]; then
    step "RabbitMQ definitions (throwaway node, never the local broker)"
    rabbitmq_bin=/usr/lib/rabbitmq/bin
    [ -x "$rabbitmq_bin/rabbitmq-server" ] || rabbitmq_bin="$(dirname "$(command -v rabbitmq-server 2> /dev/null || echo /nonexistent/x)")"
    if [ ! -x "$rabbitmq_bin/rabbitmq-server" ]; then
        fail "--with-rabbitmq: rabbitmq-server is not installed"
    else
        # boot_node DIRECTORY_OF_DEFINITIONS EXPECTATION...: each expectation is
        # "user:password:ok" or "user:password:refused".
        boot_node() {
            local definitions="$1"
            shift
            local node_dir node="palworkercheck$$@localhost" rabbitmqctl
            node_dir="$(mktemp -d "$work_dir/node.XXXX")"
            rabbitmqctl="$rabbitmq_bin/rabbitmqctl"
            mkdir -p "$node_dir/home" "$node_dir/mnesia" "$node_dir/log" "$node_dir/conf.d"
            echo '[].' > "$node_dir/enabled_plugins"
            printf 'listeners.tcp.default = 127.0.0.1:5797\nload_definitions = %s\n' "$definitions" > "$node_dir/rabbitmq.conf"
            (
                cd "$node_dir" || exit 1
                export HOME="$node_dir/home" RABBITMQ_NODENAME="$node" RABBITMQ_NODE_PORT=5797 \
                    RABBITMQ_DIST_PORT=25797 RABBITMQ_MNESIA_BASE="$node_dir/mnesia" \
                    RABBITMQ_LOG_BASE="$node_dir/log" RABBITMQ_LOGS="$node_dir/log/node.log" \
                    RABBITMQ_CONFIG_FILE="$node_dir/rabbitmq.conf" RABBITMQ_CONFIG_FILES="$node_dir/conf.d" \
                    RABBITMQ_ENABLED_PLUGINS_FILE="$node_dir/enabled_plugins" RABBITMQ_CONF_ENV_FILE=/dev/null \
                    RABBITMQ_PID_FILE="$node_dir/pid" RABBITMQ_FEATURE_FLAGS_FILE="$node_dir/feature_flags" \
                    RABBITMQ_PLUGINS_EXPAND_DIR="$node_dir/plugins" RABBITMQ_QUORUM_DIR="$node_dir/quorum" \
                    ERL_CRASH_DUMP="$node_dir/erl_crash.dump" ERL_EPMD_ADDRESS=127.0.0.1
                "$rabbitmq_bin/rabbitmq-server" > "$node_dir/server.out" 2>&1 &
                server_pid=$!
                started=0
                for _ in $(seq 1 90); do
                    if "$rabbitmqctl" -n "$node" -q await_startup > /dev/null 2>&1; then started=1; break; fi
                    kill -0 "$server_pid" 2> /dev/null || break
                    sleep 1
                done
                status=0
                if [ "$started" = 1 ]; then
                    queues="$("$rabbitmqctl" -n "$node" -q list_queues -p / name type durable 2>&1)"
                    bindings="$("$rabbitmqctl" -n "$node" -q list_bindings -p / source_name destination_name routing_key 2>&1)"
                    for expected in $'palworker.events\tquorum\ttrue' $'palworker.dead\tquorum\ttrue'; do
                        grep -q "$expected" <<< "$queues" || { echo "queue missing: $expected"; status=1; }
                    done
                    for expected in $'pal.lifecycle\tpalworker.events\thr.#' $'pal.lifecycle\tpalworker.events\tproject.#' \
                        $'pal.lifecycle\tpalworker.events\tpartner.#' $'pal.lifecycle.dlx\tpalworker.dead'; do
                        grep -q "$expected" <<< "$bindings" || { echo "binding missing: $expected"; status=1; }
                    done
                    for expectation in "$@"; do
                        user="${expectation%%:*}" rest="${expectation#*:}"
                        password="${rest%:*}" want="${rest##*:}"
                        if "$rabbitmqctl" -n "$node" -q authenticate_user "$user" "$password" > /dev/null 2>&1; then got=ok; else got=refused; fi
                        [ "$got" = "$want" ] || { echo "login $user: expected $want, got $got"; status=1; }
                    done
                else
                    echo "node did not start:"; tail -n 20 "$node_dir/server.out"; status=1
                fi
                "$rabbitmqctl" -n "$node" -q stop > /dev/null 2>&1 || kill "$server_pid" 2> /dev/null
                wait "$server_pid" 2> /dev/null
                exit $status
            )
        }
        mkdir -p "$work_dir/defs-production" "$work_dir/defs-compose"
        cp ops/rabbitmq/definitions.json "$work_dir/defs-production/10-palworker.json"
        cp ops/rabbitmq/definitions.json "$work_dir/defs-compose/10-palworker.json"
        cp docker/rabbitmq-dev-users.json "$work_dir/defs-compose/20-dev-users.json"
        check "ops/rabbitmq/definitions.json loads; placeholder users cannot log in" \
            boot_node "$work_dir/defs-production" palworker:dev-only-palworker:refused hr-system:dev-only-hr-system:refused
        check "compose definitions (ops + dev users) load; dev-only logins work" \
            boot_node "$work_dir/defs-compose" palworker:dev-only-palworker:ok hr-system:dev-only-hr-system:ok \
            project-system:dev-only-project-system:ok admin:dev-only-admin:ok palworker:wrong:refused
    fi
fi

# --------------------------------------------------------------------------
printf '\n%d passed, %d failed\n' "$passed" "$failures"
if [ "$warnings" -gt 0 ]; then
    printf '(%d check(s) skipped, see "skip" lines above)\n' "$warnings"
fi
[ "$failures" = 0 ]
