"""Issue 12 and 20's schema: enrolment codes, identity keys, token recovery, rate windows,
per-task privacy charges, both epsilons of a round, aggregation retries and lease owners,
secure-round abort causes, the server heartbeat.

Devices enrolled before identity keys existed cannot prove who they are: they keep their
rows (their rounds stay accounted) under an identity no key matches and a token no one
holds, so they enrol again with an operator's code.

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def retire_legacy_devices() -> None:
    """Give devices from before identity keys a key and a token hash nothing can match."""
    devices = sa.table('devices', sa.column('id', sa.String), sa.column('token_sha256', sa.String),
                       sa.column('identity_key', sa.String))
    conn = op.get_bind()
    for (device_id,) in conn.execute(sa.select(devices.c.id)).all():
        unusable = hashlib.sha256(b"retired:" + secrets.token_bytes(32)).hexdigest()
        conn.execute(devices.update().where(devices.c.id == device_id).values(
            identity_key=f"legacy:{device_id}", token_sha256=unusable))


def upgrade() -> None:
    op.create_table('enrolment_codes',
    sa.Column('id', sa.String(length=16), nullable=False),
    sa.Column('code_sha256', sa.String(length=64), nullable=False),
    sa.Column('uses', sa.Integer(), nullable=False),
    sa.Column('used', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code_sha256')
    )
    op.create_table('rate_windows',
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('window_start', sa.Float(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('recovery_challenges',
    sa.Column('challenge', sa.String(length=64), nullable=False),
    sa.Column('device_id', sa.String(length=32), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], ),
    sa.PrimaryKeyConstraint('challenge')
    )
    with op.batch_alter_table('recovery_challenges', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recovery_challenges_device_id'), ['device_id'], unique=False)

    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('identity_key', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('enrolment_code', sa.String(length=16), nullable=True))
    retire_legacy_devices()
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.alter_column('identity_key', existing_type=sa.String(length=64), nullable=False)
        batch_op.create_unique_constraint('uq_devices_identity_key', ['identity_key'])

    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('epsilon_max_model_users', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('failing_since', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('last_error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('lease_owner', sa.String(length=200), nullable=True))

    with op.batch_alter_table('secagg_rounds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cause', sa.String(length=24), nullable=True))
        batch_op.add_column(sa.Column('aborts', sa.JSON(), nullable=True))

    with op.batch_alter_table('server_state', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heartbeat', sa.Float(), nullable=True))

    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('charged_at', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('z_server', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('z_model_users', sa.Float(), nullable=True))
        batch_op.create_index(batch_op.f('ix_tasks_charged_at'), ['charged_at'], unique=False)




def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tasks_charged_at'))
        batch_op.drop_column('z_model_users')
        batch_op.drop_column('z_server')
        batch_op.drop_column('charged_at')

    with op.batch_alter_table('server_state', schema=None) as batch_op:
        batch_op.drop_column('heartbeat')

    with op.batch_alter_table('secagg_rounds', schema=None) as batch_op:
        batch_op.drop_column('aborts')
        batch_op.drop_column('cause')

    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.drop_column('lease_owner')
        batch_op.drop_column('last_error')
        batch_op.drop_column('failing_since')
        batch_op.drop_column('epsilon_max_model_users')

    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_constraint('uq_devices_identity_key', type_='unique')
        batch_op.drop_column('enrolment_code')
        batch_op.drop_column('identity_key')

    with op.batch_alter_table('recovery_challenges', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recovery_challenges_device_id'))

    op.drop_table('recovery_challenges')
    op.drop_table('rate_windows')
    op.drop_table('enrolment_codes')
