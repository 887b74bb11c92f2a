"""The metadata database: one Aurora MySQL Serverless v2 cluster shared by every project.

Each project gets its own schema and user on it (``projects/``), made through the cluster's
RDS Data API (SQL over HTTPS, authorized by IAM) as the admin credentials of the admin secret,
so ``pulumi up`` needs no network path to MySQL and the database can stay private to its VPC.
The admin password is generated here (Pulumi secret, and in Secrets Manager for operators).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra.account import PARAMETER_GROUP_FAMILY, Network
from infra.config import DEFAULT_ENGINE_VERSION, DatabaseConfig, database_identifier
from infra.rds_ca import fetch_rds_ca_bundle
from mlflow_aws import passwords
from mlflow_aws.names import MASTER_USERNAME

ENGINE = aws.rds.EngineType.AURORA_MYSQL
PORT = 3306
ADMIN_USERNAME = MASTER_USERNAME  # the name rule keeps every project off this account
# Aurora allows 8-41 characters. Only URL-unreserved specials (mlflow_aws/passwords.py), so the
# password can sit in a mysql+pymysql:// URL unquoted and never trips over MySQL's forbidden
# / @ " characters.
PASSWORD_LENGTH = 40
MYSQL_SAFE_SPECIALS = passwords.UNRESERVED_SPECIALS


@dataclass
class MetadataDatabaseArgs:
    stack: str
    db: DatabaseConfig
    protect: bool  # final snapshot and Pulumi protect on the cluster
    network: Network  # the VPC, its CIDRs and the database's subnets (infra/account.py)
    tags: Mapping[str, str] = field(default_factory=dict)
    # A security group whose members (the central server's tasks) may reach MySQL.
    client_group: bool = False
    engine_version: str = DEFAULT_ENGINE_VERSION  # checked offered by infra/account.py
    parameter_group_family: str = PARAMETER_GROUP_FAMILY


class MetadataDatabase(pulumi.ComponentResource):
    endpoint: pulumi.Output[str]
    port: int
    admin_username: str
    admin_password: pulumi.Output[str]  # secret
    admin_secret_arn: pulumi.Output[str]
    database_url: pulumi.Output[str]  # secret: mysql+pymysql://admin:pw@endpoint:3306
    ca_bundle: pulumi.Output[str]  # PEM: the CAs every client verifies the server with
    cluster_arn: pulumi.Output[str]
    cluster_identifier: pulumi.Output[str]
    security_group_id: pulumi.Output[str]
    # Depend on both before running SQL through the Data API: the writer exists, and the
    # admin secret holds the credentials the Data API logs in with.
    instance: aws.rds.ClusterInstance
    admin_secret_value: aws.secretsmanager.SecretVersion
    client_security_group_id: pulumi.Output[str] | None  # members may reach MySQL

    def __init__(
        self, name: str, args: MetadataDatabaseArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlflow-aws:infra:MetadataDatabase", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        db = args.db
        tags = {**args.tags, "mlflow-aws:component": "metadata-database"}
        identifier = database_identifier(args.stack)
        network = args.network
        vpc_id = network.vpc_id

        subnet_group = aws.rds.SubnetGroup(
            f"{name}-subnets",
            aws.rds.SubnetGroupArgs(
                subnet_ids=list(network.database_subnets),
                description=f"mlflow-aws {args.stack} metadata database",
                tags=tags,
            ),
            child,
        )
        client_group = (
            aws.ec2.SecurityGroup(
                f"{name}-clients-sg",
                aws.ec2.SecurityGroupArgs(
                    vpc_id=vpc_id,
                    # No rules of its own: membership is what the database's group admits.
                    description="Members may reach the mlflow-aws metadata database (MySQL)",
                    tags=tags,
                ),
                child,
            )
            if args.client_group
            else None
        )
        security_group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            aws.ec2.SecurityGroupArgs(
                vpc_id=vpc_id,
                description="MySQL access to the mlflow-aws metadata database",
                ingress=self._ingress(db, network.cidrs, client_group.id if client_group else None),
                # No egress rules: the database never initiates connections.
                tags=tags,
            ),
            child,
        )
        parameter_group = aws.rds.ClusterParameterGroup(
            f"{name}-params",
            aws.rds.ClusterParameterGroupArgs(
                family=args.parameter_group_family,
                description="mlflow-aws: TLS-only connections; MLflow's triggers without SUPER",
                parameters=[
                    # Credentials never cross the network in clear text, even inside the VPC.
                    aws.rds.ClusterParameterGroupParameterArgs(
                        name="require_secure_transport", value="ON", apply_method="immediate"
                    ),
                    # MLflow's migrations create a trigger; a project user has no SUPER, which
                    # MySQL would demand for that as soon as binary logging is turned on.
                    aws.rds.ClusterParameterGroupParameterArgs(
                        name="log_bin_trust_function_creators",
                        value="1",
                        apply_method="immediate",
                    ),
                ],
                tags=tags,
            ),
            child,
        )

        password = random.RandomPassword(
            f"{name}-admin-password",
            random.RandomPasswordArgs(
                length=PASSWORD_LENGTH,
                override_special=MYSQL_SAFE_SPECIALS,
                min_lower=1,
                min_upper=1,
                min_numeric=1,
                # db.adminPasswordVersion: bumping it makes a new password, which Aurora takes
                # in place (ModifyDBCluster) and the admin secret then holds. Version 1 keeps
                # no keeper, so stacks made before the setting keep their password.
                keepers=(
                    {"version": str(args.db.admin_password_version)}
                    if args.db.admin_password_version != 1
                    else None
                ),
            ),
            child,
        )
        admin_password: pulumi.Output[str] = pulumi.Output.secret(password.result)
        # Final snapshot names must be unique per account and region.
        snapshot_suffix = random.RandomId(
            f"{name}-snapshot-suffix", random.RandomIdArgs(byte_length=4), child
        )

        cluster = aws.rds.Cluster(
            f"{name}-cluster",
            aws.rds.ClusterArgs(
                cluster_identifier_prefix=f"{identifier}-",
                engine=ENGINE,
                engine_version=args.engine_version,
                engine_mode="provisioned",  # Serverless v2 is "provisioned" + db.serverless
                serverlessv2_scaling_configuration=aws.rds.ClusterServerlessv2ScalingConfigurationArgs(
                    min_capacity=db.min_capacity,
                    max_capacity=db.max_capacity,
                    # Only meaningful (and only accepted) when the cluster may pause.
                    seconds_until_auto_pause=(
                        db.seconds_until_auto_pause if db.min_capacity == 0 else None
                    ),
                ),
                master_username=ADMIN_USERNAME,
                master_password=admin_password,
                port=PORT,
                db_subnet_group_name=subnet_group.name,
                vpc_security_group_ids=[security_group.id],
                db_cluster_parameter_group_name=parameter_group.name,
                storage_encrypted=True,
                backup_retention_period=db.backup_retention_days,
                copy_tags_to_snapshot=True,
                deletion_protection=db.deletion_protection,
                skip_final_snapshot=not args.protect,
                final_snapshot_identifier=(
                    pulumi.Output.concat(identifier, "-final-", snapshot_suffix.hex)
                    if args.protect
                    else None
                ),
                # The RDS Data API: the schema provider's SQL over HTTPS, authorized by IAM.
                enable_http_endpoint=True,
                # Parameter and scaling changes should not wait for the maintenance window.
                apply_immediately=True,
                tags=tags,
            ),
            pulumi.ResourceOptions(
                parent=self,
                protect=args.protect,
                additional_secret_outputs=["masterPassword"],
                # Aurora applies minor upgrades itself; without this the next `pulumi up`
                # would try to move the cluster back to db.engineVersion, which AWS refuses.
                ignore_changes=["engine_version"],
            ),
        )
        self.instance = aws.rds.ClusterInstance(
            f"{name}-instance",
            aws.rds.ClusterInstanceArgs(
                identifier_prefix=f"{identifier}-",
                cluster_identifier=cluster.id,
                instance_class="db.serverless",
                engine=ENGINE,  # the version follows the cluster's
                db_subnet_group_name=subnet_group.name,
                # Reachable from the internet only when someone listed who may reach it.
                publicly_accessible=db.publicly_accessible,
                apply_immediately=True,
                tags=tags,
            ),
            pulumi.ResourceOptions(parent=self, protect=args.protect),
        )

        secret = aws.secretsmanager.Secret(
            f"{name}-admin-secret",
            aws.secretsmanager.SecretArgs(
                name_prefix=f"mlflow-aws/{args.stack}/admin-",
                description=f"mlflow-aws {args.stack}: metadata database admin credentials",
                # Unprotected stacks may be torn down and recreated under the same name.
                recovery_window_in_days=30 if args.protect else 0,
                tags=tags,
            ),
            child,
        )
        self.admin_secret_value = aws.secretsmanager.SecretVersion(
            f"{name}-admin-secret-value",
            aws.secretsmanager.SecretVersionArgs(
                secret_id=secret.id,
                secret_string=pulumi.Output.secret(
                    pulumi.Output.json_dumps(
                        {
                            "engine": "mysql",
                            "host": cluster.endpoint,
                            "port": PORT,
                            "username": ADMIN_USERNAME,
                            "password": admin_password,
                            "dbClusterIdentifier": cluster.cluster_identifier,
                        }
                    )
                ),
            ),
            pulumi.ResourceOptions(parent=self, additional_secret_outputs=["secretString"]),
        )

        self.endpoint = cluster.endpoint
        self.port = PORT
        self.admin_username = ADMIN_USERNAME
        self.admin_password = admin_password
        self.admin_secret_arn = secret.arn
        self.database_url = pulumi.Output.secret(
            pulumi.Output.concat(
                f"mysql+pymysql://{ADMIN_USERNAME}:",
                admin_password,
                "@",
                cluster.endpoint,
                f":{PORT}",
            )
        )
        self.cluster_arn = cluster.arn
        self.cluster_identifier = cluster.cluster_identifier
        if db.ca_bundle is not None:
            self.ca_bundle = pulumi.Output.from_input(db.ca_bundle)
        else:  # AWS's bundle for the cluster's region, read now (a data source, not a resource)
            region = aws.get_region_output(opts=pulumi.InvokeOutputOptions(parent=self)).region
            self.ca_bundle = region.apply(fetch_rds_ca_bundle)
        self.security_group_id = security_group.id
        self.client_security_group_id = client_group.id if client_group else None
        self.register_outputs(
            {
                "endpoint": self.endpoint,
                "port": self.port,
                "admin_username": self.admin_username,
                "admin_password": self.admin_password,
                "admin_secret_arn": self.admin_secret_arn,
                "database_url": self.database_url,
                "cluster_arn": self.cluster_arn,
                "cluster_identifier": self.cluster_identifier,
                "security_group_id": self.security_group_id,
                "ca_bundle": self.ca_bundle,
                "client_security_group_id": self.client_security_group_id,
            }
        )

    @staticmethod
    def _ingress(
        db: DatabaseConfig,
        vpc_cidrs: Sequence[str],
        client_group_id: pulumi.Output[str] | None = None,
    ) -> list[aws.ec2.SecurityGroupIngressArgs]:
        """MySQL from inside the VPC (always: VPN, EC2, ECS; every IPv4 CIDR of the VPC), from
        the members of the client group (the central server's tasks), plus exactly
        db.allowedCidrs. (Rule descriptions: EC2 admits only a-zA-Z0-9. _-:/()#,@[]+=&;{}!$*)"""
        rules = [
            aws.ec2.SecurityGroupIngressArgs(
                description="MySQL from inside the VPC",
                protocol="tcp",
                from_port=PORT,
                to_port=PORT,
                cidr_blocks=list(vpc_cidrs),
            )
        ]
        if client_group_id is not None:
            rules.append(
                aws.ec2.SecurityGroupIngressArgs(
                    description="MySQL from the tasks of the central server (the client group)",
                    protocol="tcp",
                    from_port=PORT,
                    to_port=PORT,
                    security_groups=[client_group_id],
                )
            )
        if db.allowed_cidrs:  # IPv4 only: config refuses IPv6 (the cluster is IPv4)
            rules.append(
                aws.ec2.SecurityGroupIngressArgs(
                    description="MySQL from db.allowedCidrs",
                    protocol="tcp",
                    from_port=PORT,
                    to_port=PORT,
                    cidr_blocks=list(db.allowed_cidrs),
                )
            )
        return rules
