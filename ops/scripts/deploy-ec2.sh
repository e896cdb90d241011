#!/usr/bin/env bash
# Launch an Ubuntu 22.04 EC2 host for Tolstoy: a security group that opens
# HTTP/HTTPS to the world but SSH only to the CIDR you give, the instance
# profile from setup-iam-role.sh (the app's only AWS credentials), IMDSv2 only,
# an encrypted disk. Then follow the README's "Deploying" section on the host.
set -euo pipefail

usage() {
    cat <<'HELP'
Usage: deploy-ec2.sh --ssh-cidr CIDR --key-name NAME [options]

  --ssh-cidr CIDR         who may SSH in, e.g. 203.0.113.7/32 (required; 0.0.0.0/0 and ::/0 are refused)
  --key-name NAME         an existing EC2 key pair for SSH (required)
  --region REGION         AWS region (default: $AWS_REGION)
  --instance-type TYPE    default: t3.small
  --instance-profile NAME default: tolstoy-app (created by setup-iam-role.sh)
  --name NAME             Name tag and security group name (default: tolstoy-api)
  --vpc-id ID             default: the region's default VPC
  --subnet-id ID          default: one the VPC picks
  -h, --help              this help

Prints the instance id and public DNS name.
HELP
}

ssh_cidr=""
key_name=""
region="${AWS_REGION:-}"
instance_type="t3.small"
profile="tolstoy-app"
name="tolstoy-api"
vpc_id=""
subnet_id=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --ssh-cidr) ssh_cidr="${2:?--ssh-cidr needs a value}"; shift 2 ;;
        --key-name) key_name="${2:?--key-name needs a value}"; shift 2 ;;
        --region) region="${2:?--region needs a value}"; shift 2 ;;
        --instance-type) instance_type="${2:?--instance-type needs a value}"; shift 2 ;;
        --instance-profile) profile="${2:?--instance-profile needs a value}"; shift 2 ;;
        --name) name="${2:?--name needs a value}"; shift 2 ;;
        --vpc-id) vpc_id="${2:?--vpc-id needs a value}"; shift 2 ;;
        --subnet-id) subnet_id="${2:?--subnet-id needs a value}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "deploy-ec2: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$ssh_cidr" ] || { echo "deploy-ec2: --ssh-cidr is required (your address, e.g. 203.0.113.7/32)" >&2; exit 2; }
[ -n "$key_name" ] || { echo "deploy-ec2: --key-name is required" >&2; exit 2; }
[ -n "$region" ] || { echo "deploy-ec2: set --region or AWS_REGION" >&2; exit 2; }
case "$ssh_cidr" in
    0.0.0.0/0|::/0)
        echo "deploy-ec2: refusing to open SSH to the whole internet; give your own address or network" >&2
        exit 2 ;;
    */*) ;;
    *) echo "deploy-ec2: --ssh-cidr must be a CIDR such as 203.0.113.7/32" >&2; exit 2 ;;
esac

ec2() { aws ec2 --region "$region" "$@"; }

if [ -z "$vpc_id" ]; then
    vpc_id="$(ec2 describe-vpcs --filters Name=isDefault,Values=true --query 'Vpcs[0].VpcId' --output text)"
fi
[ -n "$vpc_id" ] && [ "$vpc_id" != "None" ] || { echo "deploy-ec2: no default VPC; pass --vpc-id" >&2; exit 1; }

group_id="$(ec2 describe-security-groups --filters "Name=group-name,Values=$name" "Name=vpc-id,Values=$vpc_id" \
    --query 'SecurityGroups[0].GroupId' --output text)"
if [ -z "$group_id" ] || [ "$group_id" = "None" ]; then
    group_id="$(ec2 create-security-group --group-name "$name" --vpc-id "$vpc_id" \
        --description "Tolstoy API: HTTP/HTTPS from anywhere, SSH from $ssh_cidr" --query GroupId --output text)"
    ec2 authorize-security-group-ingress --group-id "$group_id" --protocol tcp --port 22 --cidr "$ssh_cidr" >/dev/null
    for port in 80 443; do
        ec2 authorize-security-group-ingress --group-id "$group_id" --protocol tcp --port "$port" \
            --cidr 0.0.0.0/0 >/dev/null
    done
    echo "deploy-ec2: security group $group_id created (SSH from $ssh_cidr only)" >&2
else
    echo "deploy-ec2: reusing security group $group_id; its rules are left as they are" >&2
fi

# Canonical publishes the current Ubuntu 22.04 image id in SSM.
ami="$(aws ssm get-parameters --region "$region" \
    --names /aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id \
    --query 'Parameters[0].Value' --output text)"

# First boot: the packages the README's walk-through needs, and the service user.
user_data="$(mktemp)"
trap 'rm -f "$user_data"' EXIT
cat >"$user_data" <<'CLOUD'
#!/bin/bash
set -euo pipefail
apt-get update
apt-get install -y nginx python3-venv python3-pip git curl certbot python3-certbot-nginx awscli
id tolstoy >/dev/null 2>&1 || useradd --system --home-dir /opt/tolstoy --shell /usr/sbin/nologin tolstoy
install -d -o root -g tolstoy -m 0750 /etc/tolstoy
install -d -o root -g root -m 0755 /opt/tolstoy /opt/tolstoy/releases
CLOUD

subnet_args=()
if [ -n "$subnet_id" ]; then
    subnet_args=(--subnet-id "$subnet_id")
fi
instance_id="$(ec2 run-instances --image-id "$ami" --instance-type "$instance_type" --key-name "$key_name" \
    --security-group-ids "$group_id" "${subnet_args[@]}" \
    --iam-instance-profile "Name=$profile" \
    --metadata-options HttpTokens=required,HttpEndpoint=enabled \
    --block-device-mappings 'DeviceName=/dev/sda1,Ebs={VolumeSize=20,VolumeType=gp3,Encrypted=true}' \
    --user-data "file://$user_data" \
    --tag-specifications "ResourceType=instance,Tags=[{Key=Name,Value=$name}]" \
    --query 'Instances[0].InstanceId' --output text)"
echo "deploy-ec2: launched $instance_id; waiting until it runs" >&2
ec2 wait instance-running --instance-ids "$instance_id"
dns="$(ec2 describe-instances --instance-ids "$instance_id" \
    --query 'Reservations[0].Instances[0].PublicDnsName' --output text)"
echo "instance: $instance_id"
echo "public DNS: $dns"
echo "next: ssh ubuntu@$dns, then the README's 'Deploying' steps" >&2
