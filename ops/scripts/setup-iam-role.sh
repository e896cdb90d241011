#!/usr/bin/env bash
# Create the IAM role and instance profile a Tolstoy EC2 host runs as: it may
# read exactly one secret (secretsmanager:GetSecretValue on its ARN), nothing else.
set -euo pipefail

usage() {
    cat <<'HELP'
Usage: setup-iam-role.sh [--secret-name NAME] [--region REGION] [--role-name NAME]

  --secret-name NAME  the secret the app reads (default: $AWS_SECRET_NAME or tolstoy-db-secret);
                      it must exist (create-aws-secret.sh) so its exact ARN can be granted
  --region REGION     AWS region (default: $AWS_REGION)
  --role-name NAME    role and instance profile name (default: tolstoy-app)
  -h, --help          this help

Safe to run again: existing role/profile are kept and the policy is replaced.
If the secret is encrypted with a customer-managed KMS key, also allow
kms:Decrypt on that key (the AWS-managed default key needs nothing more).
HELP
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
iam_dir="$here/../iam"
secret="${AWS_SECRET_NAME:-tolstoy-db-secret}"
region="${AWS_REGION:-}"
role="tolstoy-app"
while [ "$#" -gt 0 ]; do
    case "$1" in
        --secret-name) secret="${2:?--secret-name needs a value}"; shift 2 ;;
        --region) region="${2:?--region needs a value}"; shift 2 ;;
        --role-name) role="${2:?--role-name needs a value}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "setup-iam-role: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$region" ] || { echo "setup-iam-role: set --region or AWS_REGION" >&2; exit 2; }

arn="$(aws secretsmanager describe-secret --region "$region" --secret-id "$secret" --query ARN --output text)"
echo "setup-iam-role: granting read access to $arn" >&2

policy="$(mktemp)"
trap 'rm -f "$policy"' EXIT
# The policy names the full ARN (with its random suffix): no wildcard, no other secret.
sed "s|SECRET_ARN|$arn|" "$iam_dir/policy.json" >"$policy"

if ! aws iam get-role --role-name "$role" >/dev/null 2>&1; then
    aws iam create-role --role-name "$role" \
        --assume-role-policy-document "file://$iam_dir/trust-policy.json" \
        --description "Tolstoy app hosts: read the database secret" >/dev/null
fi
aws iam put-role-policy --role-name "$role" --policy-name tolstoy-read-db-secret \
    --policy-document "file://$policy"

if ! aws iam get-instance-profile --instance-profile-name "$role" >/dev/null 2>&1; then
    aws iam create-instance-profile --instance-profile-name "$role" >/dev/null
    aws iam add-role-to-instance-profile --instance-profile-name "$role" --role-name "$role"
fi
echo "setup-iam-role: instance profile '$role' is ready (deploy-ec2.sh --instance-profile $role)" >&2
