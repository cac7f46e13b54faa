"""videogen/generate/gallery.py: the index page shows every video with its prompt."""

import html.parser

import pytest

from videogen.generate import gallery


class _Collector(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.videos, self.captions, self._in_caption = [], [], False

  def handle_starttag(self, tag, attrs):
    if tag == "video":
      self.videos.append(dict(attrs)["src"])
    self._in_caption = self._in_caption or tag == "figcaption"

  def handle_endtag(self, tag):
    if tag == "figcaption":
      self._in_caption = False

  def handle_data(self, data):
    if self._in_caption and data.strip():
      self.captions.append(data.strip())


def test_every_entry_is_shown_with_its_prompt(tmp_path):
  entries = []
  for i, prompt in enumerate(["a red circle", "a <large> blue square & a small cyan triangle"]):
    (tmp_path / f"{i}.mp4").write_bytes(b"x")
    (tmp_path / f"{i}.gif").write_bytes(b"x")
    entries.append(gallery.GalleryEntry(prompt=prompt, video=f"{i}.mp4", gif=f"{i}.gif"))
  path = gallery.write_index(str(tmp_path), entries, title="t")
  collector = _Collector()
  collector.feed(open(path, encoding="utf-8").read())
  assert collector.videos == ["0.mp4", "1.mp4"]
  assert "a <large> blue square & a small cyan triangle" in collector.captions  # escaped, intact


def test_missing_video_is_an_error(tmp_path):
  entry = gallery.GalleryEntry(prompt="a red circle", video="absent.mp4")
  with pytest.raises(FileNotFoundError, match="absent.mp4"):
    gallery.write_index(str(tmp_path), [entry], title="t")


def test_contact_sheet_and_curves_are_shown_and_must_exist(tmp_path):
  (tmp_path / "0.mp4").write_bytes(b"x")
  entries = [gallery.GalleryEntry(prompt="a red circle", video="0.mp4")]
  for name in ("sheet.png", "dit.svg"):
    (tmp_path / name).write_bytes(b"x")
  path = gallery.write_index(str(tmp_path), entries, title="t", contact_sheet="sheet.png",
                             curves=["dit.svg"])
  page = open(path, encoding="utf-8").read()
  assert 'src="sheet.png"' in page and 'src="dit.svg"' in page
  with pytest.raises(FileNotFoundError, match="autoencoder.svg"):
    gallery.write_index(str(tmp_path), entries, title="t", curves=["autoencoder.svg"])


def test_images_are_shown_as_images(tmp_path):
  for name in ("0.mp4", "1.png", "2.gif"):
    (tmp_path / name).write_bytes(b"x")
  entries = [gallery.GalleryEntry(prompt=f"prompt {i}", video=name)
             for i, name in enumerate(("0.mp4", "1.png", "2.gif"))]
  page = open(gallery.write_index(str(tmp_path), entries, title="t"), encoding="utf-8").read()
  collector = _Collector()
  collector.feed(page)
  assert collector.videos == ["0.mp4"]
  assert '<img src="1.png" alt="prompt 1">' in page and '<img src="2.gif" alt="prompt 2">' in page
  assert '<a href="1.png">png</a>' in page
