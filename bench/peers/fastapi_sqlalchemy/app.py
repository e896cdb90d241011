"""Benchmark peer B: the three tool routes in FastAPI + SQLAlchemy 2.0 async ORM + asyncpg.

Written the way FastAPI services usually are: declarative mapped classes, pydantic v2
request/response models with camelCase aliases, an ``AsyncSession`` per request from
an ``async_sessionmaker`` dependency, ``selectinload`` for the tool's actions, and a
commit on POST. The tenant is whatever the ``X-Org-ID`` header says.

Run it with gunicorn.conf.py beside this file (see README.md). Environment:
``DATABASE_URL`` (a libpq URL, TCP or ``?host=/socket/dir``; converted to asyncpg's form).
The tables and enum types must already exist: nothing here creates or migrates them.
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from sqlalchemy import DateTime, ForeignKeyConstraint, Integer, Text, desc, func, select, text
from sqlalchemy.dialects.postgresql import ENUM, JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

AUTH_TYPES = ("none", "apiKey", "bearer", "basic", "oauth2")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


# ---- database ---------------------------------------------------------------


def asyncpg_url(database_url: str):
    """``postgresql://...`` (libpq form) as ``postgresql+asyncpg://...``.

    SQLAlchemy's asyncpg dialect understands a ``?host=/socket/dir`` query parameter
    itself, so unix-socket URLs need no special handling beyond the driver name.
    """
    return make_url(database_url).set(drivername="postgresql+asyncpg")


engine = create_async_engine(asyncpg_url(os.environ["DATABASE_URL"]), pool_size=10, max_overflow=10)
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


# The enum types belong to the schema's migrations; create_type=False keeps SQLAlchemy
# from ever trying to create them.
ToolAuthType = ENUM(*AUTH_TYPES, name="tool_auth_type", create_type=False)
HttpMethod = ENUM(*HTTP_METHODS, name="http_method", create_type=False)


class Tool(Base):
    __tablename__ = "tools"

    org_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))
    name: Mapped[str] = mapped_column(Text)
    base_url: Mapped[str] = mapped_column(Text)
    auth_type: Mapped[str] = mapped_column(ToolAuthType, server_default="none")
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    actions: Mapped[list[Action]] = relationship(
        order_by=lambda: (desc(Action.created_at), desc(Action.id)), lazy="raise"
    )


class Action(Base):
    __tablename__ = "actions"
    __table_args__ = (ForeignKeyConstraint(["org_id", "tool_id"], ["tools.org_id", "tools.id"]),)

    org_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))
    tool_id: Mapped[uuid.UUID]
    name: Mapped[str] = mapped_column(Text)
    key: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(HttpMethod)
    endpoint: Mapped[str] = mapped_column(Text)
    headers: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    input_schema: Mapped[Any] = mapped_column(JSONB, nullable=True)
    execute_if: Mapped[Any] = mapped_column(JSONB, nullable=True)
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


async def get_session() -> AsyncIterator[AsyncSession]:
    """One session per request, closed (its connection returned to the pool) afterwards."""
    async with SessionLocal() as session:
        yield session


Session = Annotated[AsyncSession, Depends(get_session)]
OrgId = Annotated[uuid.UUID, Header(alias="X-Org-ID")]


# ---- API models ---------------------------------------------------------------


class CamelModel(BaseModel):
    """snake_case attributes, camelCase JSON; readable straight from ORM objects."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


class ToolIn(CamelModel):
    name: str
    base_url: str
    auth_type: Literal["none", "apiKey", "bearer", "basic", "oauth2"]


class ToolOut(CamelModel):
    id: uuid.UUID
    org_id: uuid.UUID
    name: str
    base_url: str
    auth_type: str
    created_at: datetime.datetime
    updated_at: datetime.datetime


class ActionOut(CamelModel):
    id: uuid.UUID
    org_id: uuid.UUID
    tool_id: uuid.UUID
    name: str
    key: str
    method: str
    endpoint: str
    headers: dict[str, Any] | None
    input_schema: Any
    execute_if: Any
    version: int
    created_at: datetime.datetime
    updated_at: datetime.datetime


class ToolDetailOut(ToolOut):
    actions: list[ActionOut]


# ---- routes -------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Close this worker's connections on shutdown."""
    yield
    await engine.dispose()


app = FastAPI(title="Tools (FastAPI + SQLAlchemy peer)", lifespan=lifespan)


@app.get("/tools/{tool_id}", response_model=ToolDetailOut)
async def get_tool(tool_id: uuid.UUID, org_id: OrgId, session: Session) -> Tool:
    """One tool with its actions, newest first."""
    stmt = select(Tool).where(Tool.org_id == org_id, Tool.id == tool_id).options(selectinload(Tool.actions))
    tool = (await session.scalars(stmt)).first()
    if tool is None:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail="Tool not found.")
    return tool


@app.get("/tools", response_model=list[ToolOut])
async def list_tools(org_id: OrgId, session: Session, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> list[Tool]:
    """The organization's tools, newest first."""
    stmt = select(Tool).where(Tool.org_id == org_id).order_by(Tool.created_at.desc(), Tool.id.desc()).limit(limit)
    return list(await session.scalars(stmt))


@app.post("/tools", response_model=ToolOut, status_code=status.HTTP_201_CREATED)
async def create_tool(body: ToolIn, org_id: OrgId, session: Session) -> Tool:
    """Create a tool; a duplicate name in the organization is a 409."""
    tool = Tool(org_id=org_id, name=body.name, base_url=body.base_url, auth_type=body.auth_type)
    session.add(tool)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail="A tool with this name already exists.") from None
    return tool
