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


def bucket_prefix(stack: str) -> str:
    """A valid S3 bucket-name prefix that names the stack (mlflow_aws/names.py: the helper
    checks the bucket of a connection bundle by it)."""
    return names.bucket_prefix(stack)


@dataclass
class ArtifactStoreArgs:
    stack: str
    protect: bool  # retain the bucket and never empty it on delete
    tags: Mapping[str, str] = field(default_factory=dict)


class ArtifactStore(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    artifact_root: pulumi.Output[str]  # "s3://<bucket>"

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
        aws.s3.BucketPolicy(
            f"{name}-tls-only",
            aws.s3.BucketPolicyArgs(
                bucket=bucket.id,
                policy=pulumi.Output.json_dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Sid": "DenyInsecureTransport",
                                "Effect": "Deny",
                                "Principal": "*",
                                "Action": "s3:*",
                                "Resource": [bucket.arn, pulumi.Output.concat(bucket.arn, "/*")],
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        ],
                    }
                ),
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
