"""PostgreSQL: one function that makes a batch of daily-limit counts and refunds, so the hot path's
group commit is one statement, one round trip (storage/batch.py).

Revision ID: 0007_count_function
Revises: 0006_dashboard_hardening
"""

from __future__ import annotations

from alembic import op

revision = "0007_count_function"
down_revision = "0006_dashboard_hardening"
branch_labels = None
depends_on = None

# For each call in order (`calls` numbers the subjects of one call alike): one more call for each
# of its subjects on its day, all or none. The answer has one element per subject: the new count,
# or -1 for the subject whose limit was already reached (NULL for the rest of that call's subjects,
# none of which was counted). Refunds come first: each gives back a call counted in an earlier
# commit, and a count in this batch must see that room.
FUNCTION = """
CREATE FUNCTION gateway_count(
    refund_subjects text[], refund_days date[],
    subjects text[], limits integer[], calls integer[], days date[]
) RETURNS integer[] LANGUAGE plpgsql AS $$
DECLARE
    answer integer[] := '{}';
    total integer := coalesce(array_length(subjects, 1), 0);
    i integer := 1;
    j integer;
    first integer;
    counted integer;
    refused boolean;
BEGIN
    FOR j IN 1 .. coalesce(array_length(refund_subjects, 1), 0) LOOP
        UPDATE daily_usage SET count = count - 1
        WHERE subject = refund_subjects[j] AND day = refund_days[j] AND count > 0;
    END LOOP;
    WHILE i <= total LOOP
        first := i;
        refused := false;
        WHILE i <= total AND calls[i] = calls[first] LOOP
            IF refused THEN
                answer := answer || NULL::integer;
            ELSE
                UPDATE daily_usage SET count = count + 1
                WHERE subject = subjects[i] AND day = days[i] AND (limits[i] IS NULL OR count < limits[i])
                RETURNING count INTO counted;
                IF NOT FOUND THEN
                    -- The first call of the day for this subject, or a limit already reached.
                    INSERT INTO daily_usage (subject, day, count) VALUES (subjects[i], days[i], 0)
                    ON CONFLICT DO NOTHING;
                    UPDATE daily_usage SET count = count + 1
                    WHERE subject = subjects[i] AND day = days[i] AND (limits[i] IS NULL OR count < limits[i])
                    RETURNING count INTO counted;
                END IF;
                IF FOUND THEN
                    answer := answer || counted;
                ELSE
                    refused := true;
                    answer := answer || -1;
                    FOR j IN first .. i - 1 LOOP
                        UPDATE daily_usage SET count = count - 1 WHERE subject = subjects[j] AND day = days[j];
                        answer[j] := NULL;
                    END LOOP;
                END IF;
            END IF;
            i := i + 1;
        END LOOP;
    END LOOP;
    RETURN answer;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION gateway_count(text[], date[], text[], integer[], integer[], date[])")
