"""ORM tables of the human rating queue.

Times are Unix seconds as floats: portable across SQLite and PostgreSQL and
free of time-zone surprises. Images are stored as the PNG bytes the trainer
sent, inside the database, so one transaction (and one backup) covers all.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Double,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Explicit constraint names, so migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Rater(Base):
    """A person allowed to rate; signs in with an invite token (only its hash is kept)."""

    __tablename__ = "raters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    token_hash: Mapped[str] = mapped_column(String(80), unique=True)
    created_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double, nullable=True)


class Job(Base):
    """One POST /v1/jobs request: its items wait for ratings until the deadline."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    scorer: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(16))  # "score" (1-10) or "pair" (A/B)
    ratings_per_item: Mapped[int] = mapped_column(Integer)
    num_items: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Double)
    deadline: Mapped[float] = mapped_column(Double, index=True)
    cancelled_at: Mapped[float | None] = mapped_column(Double, nullable=True)


class Item(Base):
    """One image of a job, in request order (`position`)."""

    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("job_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    external_id: Mapped[str] = mapped_column(String(256))
    prompt: Mapped[str] = mapped_column(Text)
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    image_png: Mapped[bytes] = mapped_column(LargeBinary)
    #: Pair mode: another item of the job has the same prompt, so it can be compared.
    pairable: Mapped[bool] = mapped_column(Boolean, default=True)


class Lease(Base):
    """An item (or pair) handed to one rater until `expires_at`; counts toward k meanwhile."""

    __tablename__ = "leases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    other_item_id: Mapped[int | None] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), nullable=True
    )
    #: Pair mode: show other_item as "A", so position on screen does not track the focal item.
    swapped: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double, index=True)


class Rating(Base):
    """An acknowledged rating. Score mode: `score` 1-10 of `item_id`.

    Pair mode: `item_id` won against `other_item_id` and `score` is null.
    """

    __tablename__ = "ratings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    other_item_id: Mapped[int | None] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), nullable=True, index=True
    )
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), index=True)
    score: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: The lease it answered: a retried submit finds its rating instead of failing.
    lease_token: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    created_at: Mapped[float] = mapped_column(Double)
