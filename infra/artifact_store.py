"""The artifact store: one private, encrypted, versioned S3 bucket shared by every project.

Each project writes under its own prefix ``s3://<bucket>/<project>/`` (see ``projects/``);
the bucket-wide settings that keep those artifacts safe live here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from mlflow_aws import names

NONCURRENT_VERSION_DAYS = 30  # how long an overwritten or deleted artifact can be recovered
# Parts of an upload that never completed (a killed training job, a lost laptop link) are
# invisible as artifacts but billed until aborted: MLflow's presigned multipart uploads leave
# them behind whenever the client dies between the first part and "complete". A day is the
# shortest S3 allows, and longer than any upload MLflow's presigned part URLs (1 h) permit.
ABORT_MULTIPART_DAYS = 1

# The central server's load balancer writes its access logs under this prefix. "_" is in no
# project name (mlflow_aws/names.py), so no project's prefix, and no project's policy, covers it.
LOAD_BALANCER_LOG_PREFIX = "_alb-access-logs"
# Who delivers ALB access logs: in Regions opened before August 2022, the Region's Elastic Load
# Balancing account; in later ones, the log delivery service principal. Source: "Enable access
# logs for your Application Load Balancer", Step 2: attach a policy to your S3 bucket,
# https://docs.aws.amazon.com/elasticloadbalancing/latest/application/enable-access-logging.html
ELB_LOG_ACCOUNTS = {
    "us-east-1": "127311923021", "us-east-2": "033677994240", "us-west-1": "027434742980",
    "us-west-2": "797873946194", "af-south-1": "098369216593", "ap-east-1": "754344448648",
    "ap-southeast-3": "589379963580", "ap-south-1": "718504428378",
    "ap-northeast-3": "383597477331", "ap-northeast-2": "600734575887",
    "ap-southeast-1": "114774131450", "ap-southeast-2": "783225319266",
    "ap-northeast-1": "582318560864", "ca-central-1": "985666609251",
    "eu-central-1": "054676820928", "eu-west-1": "156460612806", "eu-west-2": "652711504416",
    "eu-south-1": "635631232127", "eu-west-3": "009996457667", "eu-north-1": "897822967062",
    "me-south-1": "076674570225", "sa-east-1": "507241528517",
    "us-gov-west-1": "048591011584", "us-gov-east-1": "190560391635",
    "cn-north-1": "638102146993", "cn-northwest-1": "037604701340",
}  # fmt: skip
LOG_DELIVERY_PRINCIPAL = "logdelivery.elasticloadbalancing.amazonaws.com"


@dataclass(frozen=True)
class LoadBalancerLogDelivery:
    """Where the load balancer of account ``account_id`` in ``region`` delivers its logs from."""

    account_id: str
    region: str
    partition: str = "aws"

    def writer(self) -> dict[str, str]:
        """The bucket policy principal that writes this Region's ALB access logs."""
        elb_account = ELB_LOG_ACCOUNTS.get(self.region)
        if elb_account:
            return {"AWS": f"arn:{self.partition}:iam::{elb_account}:root"}
        return {"Service": LOG_DELIVERY_PRINCIPAL}

    def statement(self, bucket_arn: pulumi.Input[str]) -> dict[str, object]:
        """Write access to this account's log objects under the log prefix, and nothing else."""
        return {
            "Sid": "LoadBalancerAccessLogs",
            "Effect": "Allow",
            "Principal": self.writer(),
            "Action": "s3:PutObject",
            "Resource": pulumi.Output.concat(
                bucket_arn, f"/{LOAD_BALANCER_LOG_PREFIX}/AWSLogs/{self.account_id}/*"
            ),
        }


def bucket_prefix(stack: str) -> str:
    """A valid S3 bucket-name prefix that names the stack (mlflow_aws/names.py: the helper
    checks the bucket of a connection bundle by it)."""
    return names.bucket_prefix(stack)


@dataclass
class ArtifactStoreArgs:
    stack: str
    protect: bool  # retain the bucket and never empty it on delete
    tags: Mapping[str, str] = field(default_factory=dict)
    # With the central server: its load balancer's access logs go to this bucket.
    load_balancer_logs: LoadBalancerLogDelivery | None = None


class ArtifactStore(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    artifact_root: pulumi.Output[str]  # "s3://<bucket>"
    policy: aws.s3.BucketPolicy  # a load balancer logging here waits for it (AWS checks it)

    def __init__(
        self, name: str, args: ArtifactStoreArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlflow-aws:infra:ArtifactStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {**args.tags, "mlflow-aws:component": "artifact-store"}

        bucket = aws.s3.Bucket(
            f"{name}-bucket",
            aws.s3.BucketArgs(
                bucket_prefix=bucket_prefix(args.stack),
                # Unprotected (dev) stacks can be destroyed in one go; protected ones keep
                # their artifacts even if someone deletes the stack.
                force_destroy=not args.protect,
                tags=tags,
            ),
            pulumi.ResourceOptions(
                parent=self, protect=args.protect, retain_on_delete=args.protect
            ),
        )
        # SSE-S3 rather than aws:kms with the AWS-managed key: the managed key adds no access
        # control (any principal allowed by S3 may use it) but adds KMS cost and quotas, and
        # the per-project IAM policies would need kms:* grants. A customer key is a later step.
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            aws.s3.BucketServerSideEncryptionConfigurationInitArgs(
                bucket=bucket.id,
                rules=[
                    aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                        apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                            sse_algorithm="AES256"
                        ),
                    )
                ],
            ),
            child,
        )
        # Versioning turns an accidental overwrite or delete of a model into a recoverable one.
        versioning = aws.s3.BucketVersioning(
            f"{name}-versioning",
            aws.s3.BucketVersioningInitArgs(
                bucket=bucket.id,
                versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(
                    status="Enabled"
                ),
            ),
            child,
        )
        public_access = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access",
            aws.s3.BucketPublicAccessBlockArgs(
                bucket=bucket.id,
                block_public_acls=True,
                block_public_policy=True,
                ignore_public_acls=True,
                restrict_public_buckets=True,
            ),
            child,
        )
        statements: list[dict[str, object]] = [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [bucket.arn, pulumi.Output.concat(bucket.arn, "/*")],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ]
        if args.load_balancer_logs is not None:
            statements.append(args.load_balancer_logs.statement(bucket.arn))
        self.policy = aws.s3.BucketPolicy(
            f"{name}-tls-only",
            aws.s3.BucketPolicyArgs(
                bucket=bucket.id,
                policy=pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": statements}),
            ),
            # S3 rejects policy writes while the public access block is being applied.
            pulumi.ResourceOptions(parent=self, depends_on=[public_access]),
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            aws.s3.BucketLifecycleConfigurationArgs(
                bucket=bucket.id,
                rules=[
                    aws.s3.BucketLifecycleConfigurationRuleArgs(
                        id="expire-noncurrent-versions",
                        status="Enabled",
                        filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                        noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                            noncurrent_days=NONCURRENT_VERSION_DAYS
                        ),
                        # Once their versions are gone, delete markers are clutter.
                        expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(
                            expired_object_delete_marker=True
                        ),
                    ),
                    aws.s3.BucketLifecycleConfigurationRuleArgs(
                        id="abort-incomplete-multipart-uploads",
                        status="Enabled",
                        filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                        abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                            days_after_initiation=ABORT_MULTIPART_DAYS
                        ),
                    ),
                ],
            ),
            # Noncurrent-version rules only mean something once versioning is on.
            pulumi.ResourceOptions(parent=self, depends_on=[versioning]),
        )

        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        self.artifact_root = pulumi.Output.concat("s3://", bucket.bucket)
        self.register_outputs(
            {
                "bucket_name": self.bucket_name,
                "bucket_arn": self.bucket_arn,
                "artifact_root": self.artifact_root,
            }
        )
