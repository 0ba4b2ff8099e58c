"""Draws the teaching pictures in assets/ (run: python assets/make_pictures.py)."""
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).parent
FROZEN, LEARNS, RANDOM, HEAD, CUT = "#1f77b4", "#ff7f0e", "#9aa0a6", "#2ca02c", "#d62728"


def font(size: int) -> ImageFont.ImageFont:
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    return ImageFont.load_default(size)


def row(draw: ImageDraw.ImageDraw, y: int, colors: list[str], labels: list[str], x0: int = 170) -> None:
    for k, (c, t) in enumerate(zip(colors, labels)):
        x = x0 + k * 92
        draw.rounded_rectangle((x, y, x + 84, y + 46), 8, fill=c)
        draw.text((x + 42, y + 23), t, fill="white", font=font(14), anchor="mm")


def backbone() -> None:
    img = Image.new("RGB", (1100, 250), "white")
    d = ImageDraw.Draw(img)
    d.text((20, 20), "Pretrained on ImageNet:", fill="black", font=font(17))
    stages = ["stem", "block 1", "block 2", "block 3", "block 4", "block 5", "head"]
    row(d, 50, [FROZEN] * 7, stages)
    d.rounded_rectangle((170 + 7 * 92, 50, 170 + 7 * 92 + 150, 96), 8, outline=CUT, width=3)
    d.text((170 + 7 * 92 + 75, 73), "1,000 ImageNet", fill=CUT, font=font(14), anchor="mm")
    d.text((170 + 7 * 92 + 75, 112), "classes: cut off", fill=CUT, font=font(14), anchor="mm")
    d.text((20, 150), "Reused for you:", fill="black", font=font(17))
    row(d, 140, [FROZEN] * 7, stages)
    d.rounded_rectangle((170 + 7 * 92, 140, 170 + 7 * 92 + 150, 186), 8, fill=HEAD)
    d.text((170 + 7 * 92 + 75, 163), "new head: yours", fill="white", font=font(14), anchor="mm")
    d.line((170, 215, 800, 215), fill="black", width=2)
    d.polygon([(800, 209), (812, 215), (800, 221)], fill="black")
    d.text((170, 222), "general features (edges, colours, textures)", fill="#444", font=font(14))
    d.text((812, 222), "specific (parts, objects)", fill="#444", font=font(14), anchor="ra")
    img.save(HERE / "backbone.png", optimize=True)


def strategies() -> None:
    img = Image.new("RGB", (1000, 230), "white")
    d = ImageDraw.Draw(img)
    rows = [("Feature extraction", [FROZEN] * 6), ("Fine-tuning", [FROZEN] * 3 + [LEARNS] * 3),
            ("From scratch", [RANDOM] * 6)]
    for k, (name, colors) in enumerate(rows):
        y = 15 + k * 70
        d.text((20, y + 23), name, fill="black", font=font(17), anchor="lm")
        row(d, y, colors + [HEAD], ["stem", "1", "2", "3", "4", "5", "head"], x0=220)
    img.save(HERE / "strategies.png", optimize=True)


if __name__ == "__main__":
    backbone()
    strategies()
