"""The schema as `create_all` made it before migrations existed (main at f4890bf).

A database from that time has no alembic_version table: `aggregation_server.migrate`
stamps it with this revision, then upgrades it.

Revision ID: 0001
Revises: 
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('devices',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_sha256')
    )
    op.create_table('model_versions',
    sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('round_id', sa.Integer(), nullable=True),
    sa.Column('reports', sa.Integer(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('provenance', sa.JSON(), nullable=False),
    sa.Column('optimizer_path', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('version')
    )
    op.create_table('rounds',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('model_version', sa.Integer(), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('opened_at', sa.Float(), nullable=False),
    sa.Column('deadline', sa.Float(), nullable=False),
    sa.Column('target', sa.Integer(), nullable=False),
    sa.Column('minimum', sa.Integer(), nullable=False),
    sa.Column('capacity', sa.Integer(), nullable=False),
    sa.Column('tasks_issued', sa.Integer(), nullable=False),
    sa.Column('reports', sa.Integer(), nullable=False),
    sa.Column('lease_until', sa.Float(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('new_version', sa.Integer(), nullable=True),
    sa.Column('closed_at', sa.Float(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('epsilon_max', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rounds_state'), ['state'], unique=False)

    op.create_table('server_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('training', sa.Boolean(), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('blocked_reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('secagg_members',
    sa.Column('round_id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('device_id', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], ),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], ),
    sa.PrimaryKeyConstraint('round_id', 'client_id'),
    sa.UniqueConstraint('round_id', 'device_id')
    )
    with op.batch_alter_table('secagg_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_secagg_members_device_id'), ['device_id'], unique=False)

    op.create_table('secagg_messages',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('round_id', sa.Integer(), nullable=False),
    sa.Column('phase', sa.String(length=16), nullable=False),
    sa.Column('client_id', sa.Integer(), nullable=False),
    sa.Column('body', sa.Text(), nullable=True),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('round_id', 'phase', 'client_id')
    )
    with op.batch_alter_table('secagg_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_secagg_messages_round_id'), ['round_id'], unique=False)

    op.create_table('secagg_relays',
    sa.Column('round_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('client_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], ),
    sa.PrimaryKeyConstraint('round_id', 'kind', 'client_id')
    )
    op.create_table('secagg_rounds',
    sa.Column('round_id', sa.Integer(), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('phase', sa.String(length=16), nullable=False),
    sa.Column('phase_deadline', sa.Float(), nullable=False),
    sa.Column('messages', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], ),
    sa.PrimaryKeyConstraint('round_id')
    )
    op.create_table('tasks',
    sa.Column('round_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('noise_multiplier', sa.Float(), nullable=False),
    sa.Column('issued_at', sa.Float(), nullable=False),
    sa.Column('submitted_at', sa.Float(), nullable=True),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('body_sha256', sa.String(length=64), nullable=True),
    sa.Column('num_examples', sa.Integer(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('response', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], ),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], ),
    sa.PrimaryKeyConstraint('round_id', 'device_id')
    )
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tasks_device_id'), ['device_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tasks_device_id'))

    op.drop_table('tasks')
    op.drop_table('secagg_rounds')
    op.drop_table('secagg_relays')
    with op.batch_alter_table('secagg_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_secagg_messages_round_id'))

    op.drop_table('secagg_messages')
    with op.batch_alter_table('secagg_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_secagg_members_device_id'))

    op.drop_table('secagg_members')
    op.drop_table('server_state')
    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rounds_state'))

    op.drop_table('rounds')
    op.drop_table('model_versions')
    op.drop_table('devices')
