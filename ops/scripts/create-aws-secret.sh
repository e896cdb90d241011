#!/usr/bin/env bash
# Create (or update) the AWS Secrets Manager secret Tolstoy reads in production,
# from a .env file. Values never reach the terminal or a command line: the JSON
# goes to AWS through a private temporary file, and only key names are printed.
set -euo pipefail

usage() {
    cat <<'HELP'
Usage: create-aws-secret.sh --env-file FILE [--name NAME] [--region REGION]

Reads KEY=VALUE lines from FILE (comments and blank lines ignored; "export "
prefixes and surrounding quotes are accepted) and stores them as one JSON
secret. DATABASE_URL is required; DIRECT_URL and any other setting from the
README's configuration table may be included.

  --env-file FILE   the .env file to read (required)
  --name NAME       secret name (default: $AWS_SECRET_NAME or tolstoy-db-secret)
  --region REGION   AWS region (default: $AWS_REGION)
  -h, --help        this help

Needs the aws CLI with credentials allowed to create/put the secret (an
administrator's, not the instance role's).
HELP
}

env_file=""
name="${AWS_SECRET_NAME:-tolstoy-db-secret}"
region="${AWS_REGION:-}"
while [ "$#" -gt 0 ]; do
    case "$1" in
        --env-file) env_file="${2:?--env-file needs a value}"; shift 2 ;;
        --name) name="${2:?--name needs a value}"; shift 2 ;;
        --region) region="${2:?--region needs a value}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "create-aws-secret: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$env_file" ] || { echo "create-aws-secret: --env-file is required (see --help)" >&2; exit 2; }
[ -r "$env_file" ] || { echo "create-aws-secret: cannot read $env_file" >&2; exit 2; }
[ -n "$region" ] || { echo "create-aws-secret: set --region or AWS_REGION" >&2; exit 2; }

umask 077
payload="$(mktemp)"
trap 'rm -f "$payload"' EXIT

# Python (always on Ubuntu) writes the JSON: correct escaping, values never printed.
python3 - "$env_file" "$payload" <<'PY'
import json, re, sys
source, target = sys.argv[1], sys.argv[2]
values = {}
for number, line in enumerate(open(source, encoding="utf-8"), start=1):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    match = re.match(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", line)
    if not match:
        sys.exit(f"create-aws-secret: {source}:{number}: not KEY=VALUE")
    key, value = match.groups()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    values[key] = value
if not values.get("DATABASE_URL"):
    sys.exit(f"create-aws-secret: {source} has no DATABASE_URL")
with open(target, "w", encoding="utf-8") as out:
    json.dump(values, out)
print("create-aws-secret: keys: " + ", ".join(sorted(values)), file=sys.stderr)
PY

if aws secretsmanager describe-secret --region "$region" --secret-id "$name" >/dev/null 2>&1; then
    aws secretsmanager put-secret-value --region "$region" --secret-id "$name" \
        --secret-string "file://$payload" --query VersionId --output text >/dev/null
    echo "create-aws-secret: stored a new version of '$name' in $region" >&2
else
    aws secretsmanager create-secret --region "$region" --name "$name" \
        --description "Tolstoy settings (DATABASE_URL, DIRECT_URL, ...)" \
        --secret-string "file://$payload" --query ARN --output text >/dev/null
    echo "create-aws-secret: created '$name' in $region" >&2
fi
