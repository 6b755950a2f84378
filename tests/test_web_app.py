"""The chat app (`/` of meta) in headless Chromium against a real `pystacker up` process.

Two browser contexts are two users (separate storage); two pages of one context are two tabs of one
user. Every wait is a Playwright expectation or a poll with a deadline. A failed test leaves PNGs of
its pages in PYSTACKER_TEST_ARTIFACTS (tests/browser.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import expect

from tests.browser import ARTIFACTS, ROOT, Screenshots, UpProcess, launch_chromium, running_up, unique_name

PASSWORD = "browser-secret-1"
WAIT_MS = 15_000  # one expectation; a reconnect after a restart fits well within it
# The pictures of docs/web.md are taken by these tests: into docs/img with PYSTACKER_DOC_IMAGES=1, else
# into the artifacts folder (so a test run leaves the committed ones alone).
DOCS_IMG = ROOT / "docs" / "img" if os.environ.get("PYSTACKER_DOC_IMAGES") == "1" else ARTIFACTS / "doc-images"


@pytest.fixture(scope="module")
async def up(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[UpProcess]:
    async with running_up(tmp_path_factory.mktemp("web-up")) as process:
        yield process


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    async with launch_chromium() as chromium:
        yield chromium


@pytest.fixture
async def shots(request: pytest.FixtureRequest) -> AsyncIterator[Screenshots]:
    screenshots = Screenshots(request)
    yield screenshots
    await screenshots.save_if_failed()


class User:
    """One signed-in user in one page."""

    def __init__(self, page: Any, name: str, user_id: int) -> None:
        self.page, self.name, self.user_id = page, name, user_id

    def room_button(self, room_name: str) -> Any:
        return self.page.locator("#rooms .room", has=self.page.locator(".room-name", has_text=room_name))

    def messages(self) -> Any:
        return self.page.locator("#messages .msg .text")

    def message(self, text: str) -> Any:
        return self.page.locator("#messages .msg", has=self.page.locator(".text", has_text=re.compile(f"^{re.escape(text)}$")))

    async def open_room(self, room_name: str) -> None:
        await self.room_button(room_name).click()
        await expect(self.page.locator("#room-title")).to_have_text(room_name, timeout=WAIT_MS)

    async def send(self, text: str) -> None:
        box = self.page.get_by_label("Message", exact=True)
        await box.fill(text)
        await box.press("Enter")

    async def connected(self) -> None:
        await expect(self.page.locator("body")).to_have_attribute("data-connection", "connected", timeout=WAIT_MS)


async def new_page(browser: Any, shots: Screenshots, context: Any = None) -> Any:
    context = context or await browser.new_context(viewport={"width": 1000, "height": 700})
    page = shots.watch(await context.new_page())
    page.set_default_timeout(WAIT_MS)
    return page


async def sign_up(page: Any, up: UpProcess, prefix: str) -> User:
    name = unique_name(prefix)
    await page.goto(up.app_url)
    await page.get_by_label("Username").fill(name)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    me = page.locator("#me")
    await expect(me).to_contain_text(f"Signed in as {name}")
    user_id = int(re.search(r"user id (\d+)", await me.text_content()).group(1))  # type: ignore[union-attr]
    user = User(page, name, user_id)
    await user.connected()
    return user


async def create_group(user: User, name: str, member_ids: list[int]) -> None:
    page = user.page
    await page.locator("#new-room summary").click()
    await page.get_by_label("Room name").fill(name)
    await page.get_by_label("Members (user ids, comma-separated)").fill(", ".join(map(str, member_ids)))
    await page.get_by_role("button", name="Create", exact=True).click()
    await expect(page.locator("#room-title")).to_have_text(name)


async def expect_texts(user: User, texts: list[str]) -> None:
    """The open conversation shows exactly these messages, in this order."""
    await expect(user.messages()).to_have_text(texts, timeout=WAIT_MS)


async def test_two_users_chat_both_ways_with_unread_badges_and_states(up: UpProcess, browser: Any,
                                                                      shots: Screenshots) -> None:
    ann = await sign_up(await new_page(browser, shots), up, "ann")
    bob = await sign_up(await new_page(browser, shots), up, "bob")
    room = unique_name("lobby-")
    await create_group(ann, room, [bob.user_id])

    await ann.send("hello bob")
    await expect(ann.message("hello bob").locator(".state")).to_have_text(re.compile("Sent|Delivered"))
    # Bob learns of the room by its first message: it appears with an unread badge that counts up.
    badge = bob.room_button(room).locator(".badge")
    await expect(badge).to_have_text("1")
    await ann.send("are you there?")
    await expect(badge).to_have_text("2")
    await expect(bob.room_button(room).locator(".room-last")).to_contain_text("are you there?")
    await expect(bob.page).to_have_title("(2) PyStacker chat")

    await bob.open_room(room)
    await expect(badge).to_have_text("")
    await expect_texts(bob, ["hello bob", "are you there?"])
    await expect(bob.page.locator("#messages .day")).to_have_text(["Today"])
    await expect(bob.message("hello bob").locator(".sender")).to_have_text(ann.name)
    # Bob's read mark reaches Ann as a read receipt.
    await expect(ann.message("are you there?").locator(".state")).to_have_text("Read")

    # Bob types: Ann, who has the room open, sees it until his message comes.
    await bob.page.locator("#composer-text").press_sequentially("yes")
    await expect(ann.page.locator("#typing")).to_have_text(f"{bob.name} is typing…")
    await bob.page.locator("#composer-text").fill("")
    await bob.send("yes, here")
    await expect_texts(ann, ["hello bob", "are you there?", "yes, here"])
    await expect(ann.page.locator("#typing")).to_have_text("")
    await expect(ann.message("yes, here").locator(".sender")).to_have_text(bob.name)
    await expect(bob.message("yes, here").locator(".state")).to_have_text(re.compile("Sent|Delivered|Read"))
    await expect(ann.room_button(room).locator(".badge")).to_have_text("")  # Ann has the room open


async def test_offline_user_catches_up_in_order(up: UpProcess, browser: Any, shots: Screenshots) -> None:
    ann = await sign_up(await new_page(browser, shots), up, "ann")
    bob_page = await new_page(browser, shots)
    bob = await sign_up(bob_page, up, "bob")
    room = unique_name("offline-")
    await create_group(ann, room, [bob.user_id])
    await ann.send("before")
    await bob.open_room(room)
    await expect_texts(bob, ["before"])

    await bob_page.context.set_offline(True)
    await expect(bob_page.locator("#banner")).to_contain_text("Reconnecting")
    sent = [f"while away {n}" for n in range(1, 8)]
    for text in sent:
        await ann.send(text)
    await expect(ann.message(sent[-1]).locator(".state")).to_have_text(re.compile("Sent|Delivered"))
    await expect_texts(bob, ["before"])  # nothing reached Bob while he is offline

    await bob_page.context.set_offline(False)
    await bob.connected()
    await expect(bob_page.locator("#banner")).to_be_hidden()
    await expect_texts(bob, ["before", *sent])
    seqs = [int(s) for s in await bob_page.locator("#messages .msg").evaluate_all("ns => ns.map(n => n.dataset.seq)")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs


async def test_both_reconnect_after_a_server_restart_and_nothing_is_lost(up: UpProcess, browser: Any,
                                                                          shots: Screenshots) -> None:
    ann = await sign_up(await new_page(browser, shots), up, "ann")
    bob = await sign_up(await new_page(browser, shots), up, "bob")
    room = unique_name("restart-")
    await create_group(ann, room, [bob.user_id])
    await ann.send("before the restart")
    await bob.open_room(room)
    await expect_texts(bob, ["before the restart"])
    await bob.send("go ahead")
    await expect_texts(ann, ["before the restart", "go ahead"])

    # Bob's receipt first: a group's receipts are paced (limits.read_receipt_interval_ms).
    await expect(ann.message("before the restart").locator(".state")).to_have_text("Read")

    await up.stop()
    try:
        for user in (ann, bob):
            await expect(user.page.locator("#banner")).to_contain_text("Reconnecting")
        # Sent while the server is down: it waits as "Sending…" and goes out after the reconnect.
        await ann.send("sent while it is down")
        await expect(ann.message("sent while it is down")).to_have_attribute("data-state", "sending")
        DOCS_IMG.mkdir(parents=True, exist_ok=True)  # the docs' picture of message states and the banner
        await ann.page.screenshot(path=str(DOCS_IMG / "web-conversation.png"))
    finally:
        await up.start()  # also after a failure: the module's other tests share the process

    for user in (ann, bob):
        await user.connected()
        await expect(user.page.locator("#banner")).to_be_hidden()
    await bob.send("after the restart")
    expected = ["before the restart", "go ahead", "sent while it is down", "after the restart"]
    await expect_texts(bob, expected)
    await expect_texts(ann, expected)


async def test_two_tabs_of_one_user_both_show_every_message(up: UpProcess, browser: Any, shots: Screenshots) -> None:
    ann = await sign_up(await new_page(browser, shots), up, "ann")
    bob_first = await sign_up(await new_page(browser, shots), up, "bob")
    room = unique_name("tabs-")
    await create_group(ann, room, [bob_first.user_id])
    # The second tab shares the first one's storage: it is signed in already, as another device.
    second_page = await new_page(browser, shots, context=bob_first.page.context)
    await second_page.goto(up.app_url)
    bob_second = User(second_page, bob_first.name, bob_first.user_id)
    await bob_second.connected()
    await bob_first.connected()

    await ann.send("to both tabs")
    for tab in (bob_first, bob_second):
        await tab.open_room(room)
    await bob_second.send("from the second tab")
    for tab in (bob_first, bob_second, ann):
        await expect_texts(tab, ["to both tabs", "from the second tab"])


async def test_history_pages_upward_and_room_list_screenshot(up: UpProcess, browser: Any, shots: Screenshots) -> None:
    ann = await sign_up(await new_page(browser, shots), up, "ann")
    bob = await sign_up(await new_page(browser, shots), up, "bob")
    room = unique_name("long-")
    await create_group(ann, room, [bob.user_id])
    # 70 messages over HTTP (faster than typing them), then Bob opens the room: 50 first, 20 on scroll.
    texts = [f"line {n:02d}" for n in range(1, 71)]
    await ann.page.evaluate("""async (texts) => {
        const app = window.pystackerApp, roomId = app.current.roomId;
        for (const text of texts) await app.client.send(roomId, text);
    }""", texts)
    await expect(bob.room_button(room).locator(".badge")).to_have_text("70")
    await create_group(ann, unique_name("quiet-"), [bob.user_id])
    await expect(bob.page.locator("#rooms .room")).to_have_count(1)  # a room without messages shows on reload
    await bob.page.reload()
    await expect(bob.page.locator("#rooms .room")).to_have_count(2)
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    await bob.page.screenshot(path=str(DOCS_IMG / "web-room-list.png"))

    await bob.open_room(room)
    await expect(bob.messages()).to_have_count(50)
    await expect(bob.messages().first).to_have_text("line 21")
    await bob.page.locator("#messages").evaluate("list => list.scrollTo(0, 0)")
    await expect(bob.messages()).to_have_count(70)
    await expect_texts(bob, texts)


async def test_private_chat_join_requests_and_added_members(up: UpProcess, browser: Any, shots: Screenshots) -> None:
    ann = await sign_up(await new_page(browser, shots), up, "ann")
    bob = await sign_up(await new_page(browser, shots), up, "bob")
    carl = await sign_up(await new_page(browser, shots), up, "carl")

    # A private chat is named after the other member.
    await ann.page.locator("#new-room summary").click()
    await ann.page.get_by_label("Private chat").check()
    await ann.page.get_by_label("Members (user ids, comma-separated)").fill(str(bob.user_id))
    await ann.page.get_by_role("button", name="Create", exact=True).click()
    await expect(ann.page.locator("#room-title")).to_have_text(bob.name)
    await ann.send("just us")
    await expect(bob.room_button(ann.name).locator(".badge")).to_have_text("1")

    # Carl asks to join Ann's group; Ann approves under Members; Carl then gets the room's messages.
    group = unique_name("club-")
    await create_group(ann, group, [])
    room_id = await ann.page.locator("#conversation").get_attribute("data-room-id")
    await carl.page.locator("#new-room summary").click()
    await carl.page.get_by_label("Room id").fill(str(room_id))
    await carl.page.get_by_role("button", name="Ask to join").click()
    await expect(carl.page.locator("#join-form .error")).to_contain_text(f"Asked to join room {room_id}")
    await ann.open_room(bob.name)  # reopening the group lists the request that came meanwhile
    await ann.open_room(group)
    await ann.page.get_by_role("button", name="Members").click()
    request = ann.page.locator("#requests li", has_text=f"User {carl.user_id}")
    await request.get_by_role("button", name="Approve").click()
    await expect(ann.page.locator("#members")).to_contain_text(carl.name)
    await expect(ann.page.locator("#requests-box")).to_be_hidden()
    # Carl's page is open: his dot in Ann's member list says online.
    await expect(ann.page.locator(f'#members li[data-user-id="{carl.user_id}"] .dot.online')).to_have_count(1)

    # Ann adds Bob by id; both new members see the room by its next message.
    await ann.page.get_by_label("Add members (user ids)").fill(str(bob.user_id))
    await ann.page.get_by_role("button", name="Add", exact=True).click()
    await expect(ann.page.locator("#members")).to_contain_text(bob.name)
    await ann.send("welcome both")
    for member in (bob, carl):
        await expect(member.room_button(group).locator(".badge")).to_have_text("1")
        await member.open_room(group)
        await expect_texts(member, ["welcome both"])


async def test_phone_sized_screen_shows_one_column(up: UpProcess, browser: Any, shots: Screenshots) -> None:
    context = await browser.new_context(viewport={"width": 390, "height": 760})
    page = await new_page(browser, shots, context=context)
    ann = await sign_up(page, up, "ann")
    await create_group(ann, unique_name("phone-"), [])
    await expect(page.locator("#sidebar")).to_be_hidden()
    await page.get_by_role("button", name="Back to the rooms").click()
    await expect(page.locator("#sidebar")).to_be_visible()
    await expect(page.locator("#conversation")).to_be_hidden()


async def test_wrong_password_is_reported_in_the_form(up: UpProcess, browser: Any, shots: Screenshots) -> None:
    page = await new_page(browser, shots)
    ann = await sign_up(page, up, "ann")
    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_label("Username").fill(ann.name)
    await page.get_by_label("Password").fill("not-the-password")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert").first).to_have_text(re.compile(r"\S"))
    await expect(page.locator("#chat")).to_be_hidden()


async def test_replies_edits_reactions_recalls_and_hiding_live_and_after_a_reload(up: UpProcess, browser: Any,
                                                                                 shots: Screenshots) -> None:
    """Ann (the room's owner) and Bob (a member), each in a page: what one does to a message the other
    sees live, and both see the same after a reload (history's current state); a hidden message is
    gone for the one who hid it only."""
    ann = await sign_up(await new_page(browser, shots), up, "ann")
    bob = await sign_up(await new_page(browser, shots), up, "bob")
    room = unique_name("lifecycle-")
    await create_group(ann, room, [bob.user_id])
    question, edited = "what time is the meeting?", "what time is the meeting tomorrow?"
    await ann.send(question)
    await bob.open_room(room)
    await expect_texts(bob, [question])

    # Bob replies (Escape drops a reply he started): both see the quote of Ann's question above his answer.
    context = bob.page.locator("#composer-context")
    await bob.message(question).get_by_role("button", name="Reply").click()
    await expect(context).to_contain_text(f"Replying to {ann.name}:")
    await bob.page.get_by_label("Message", exact=True).press("Escape")
    await expect(context).to_be_hidden()
    await bob.message(question).get_by_role("button", name="Reply").click()
    await expect(context).to_contain_text(question)
    await bob.send("at ten")
    await expect(context).to_be_hidden()
    for user, quoted_sender in ((ann, "You"), (bob, ann.name)):
        quote = user.message("at ten").locator(".quote")
        await expect(quote.locator(".quote-sender")).to_have_text(quoted_sender)
        await expect(quote.locator(".quote-preview")).to_have_text(question)

    # Ann edits her question: the new text, marked edited, reaches Bob, and his quote follows it.
    await expect(bob.message(question).get_by_role("button", name="Edit")).to_have_count(0)  # not his
    await ann.message(question).get_by_role("button", name="Edit").click()
    box = ann.page.get_by_label("Message", exact=True)
    await expect(box).to_have_value(question)
    await box.fill(edited)
    await box.press("Enter")
    for user in (ann, bob):
        await expect_texts(user, [edited, "at ten"])
        await expect(user.message(edited).locator(".edited")).to_have_text("edited")
    await expect(bob.message("at ten").locator(".quote-preview")).to_have_text(edited)

    # Reactions: Bob picks 👍; Ann sees one and adds hers (two, highlighted for her), then takes it back.
    await bob.message(edited).get_by_role("button", name="React", exact=True).click()
    await bob.message(edited).get_by_role("button", name="React with 👍").click()
    ann_chip = ann.message(edited).locator(".reaction", has_text="👍")
    bob_chip = bob.message(edited).locator(".reaction", has_text="👍")
    await expect(ann_chip.locator(".count")).to_have_text("1")
    await expect(ann_chip).to_have_attribute("aria-pressed", "false")
    await expect(bob_chip).to_have_attribute("aria-pressed", "true")
    await ann_chip.click()
    for chip in (ann_chip, bob_chip):
        await expect(chip.locator(".count")).to_have_text("2")
    await expect(ann_chip).to_have_attribute("aria-pressed", "true")
    await ann_chip.click()
    for chip in (ann_chip, bob_chip):
        await expect(chip.locator(".count")).to_have_text("1")
    await expect(ann_chip).to_have_attribute("aria-pressed", "false")
    await bob.message("at ten").get_by_role("button", name="React", exact=True).click()
    await bob.message("at ten").get_by_role("button", name="React with 🎉").click()
    await expect(ann.message("at ten").locator(".reaction", has_text="🎉").locator(".count")).to_have_text("1")

    # Recalls: Bob recalls his own message; Ann, the owner, recalls one of Bob's; Bob may not recall hers.
    await expect(bob.message(edited).get_by_role("button", name="Recall")).to_have_count(0)
    await bob.send("never mind")
    await bob.send("oops, wrong room")
    await expect_texts(ann, [edited, "at ten", "never mind", "oops, wrong room"])
    await bob.message("never mind").get_by_role("button", name="Recall").click()
    await ann.message("oops, wrong room").get_by_role("button", name="Recall").click()
    await expect_texts(ann, [edited, "at ten", "Message recalled", "Message recalled by you"])
    await expect_texts(bob, [edited, "at ten", "Message recalled", f"Message recalled by {ann.name}"])
    await expect(bob.page.locator("#messages .msg.recalled")).to_have_count(2)

    # Bob hides Ann's last message: gone for him, still there for her.
    await ann.send("only ann keeps this")
    await expect(bob.message("only ann keeps this")).to_have_count(1)
    await bob.message("only ann keeps this").get_by_role("button", name="Hide").click()
    await expect(bob.message("only ann keeps this")).to_have_count(0)

    # After a reload both pages show the current state from history.
    ann_texts = [edited, "at ten", "Message recalled", "Message recalled by you", "only ann keeps this"]
    bob_texts = [edited, "at ten", "Message recalled", f"Message recalled by {ann.name}"]
    for user, texts in ((ann, ann_texts), (bob, bob_texts)):
        await user.page.reload()
        await user.connected()
        await user.open_room(room)
        await expect_texts(user, texts)
        await expect(user.message(edited).locator(".edited")).to_have_text("edited")
        # The quote shows the question (the server's preview: as edited, or as first sent).
        await expect(user.message("at ten").locator(".quote-preview")).to_contain_text("what time is the meeting")
        await expect(user.message(edited).locator(".reaction", has_text="👍").locator(".count")).to_have_text("1")
        await expect(user.message("at ten").locator(".reaction", has_text="🎉").locator(".count")).to_have_text("1")
    await expect(ann.message(edited).locator(".reaction", has_text="👍")).to_have_attribute("aria-pressed", "false")
    await expect(bob.message(edited).locator(".reaction", has_text="👍")).to_have_attribute("aria-pressed", "true")

    # Still live after the reload: Bob takes his 👍 back, Ann sees the reaction go.
    await bob.message(edited).locator(".reaction", has_text="👍").click()
    await expect(ann.message(edited).locator(".reaction", has_text="👍")).to_have_count(0)
    await ann.message("at ten").hover()  # the docs' picture shows a message's buttons
    await expect(ann.message("at ten").locator(".actions")).to_have_css("opacity", "1")
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    await ann.page.screenshot(path=str(DOCS_IMG / "web-lifecycle.png"))
