// PNG output: what is written reads back pixel for pixel through libpng; the canvas draws
// images and text where asked; bad sizes are refused.
#include <doctest/doctest.h>

#include <filesystem>
#include <unistd.h>

#include "engine/png.h"

using namespace iif;

TEST_CASE("PNG roundtrip and canvas drawing") {
  const std::string path = (std::filesystem::temp_directory_path() / ("iif_png_" + std::to_string(getpid()) + ".png")).string();
  png::Canvas c(40, 20, {10, 20, 30});
  c.draw_image(2, 3, {0.f, 0.5f, 1.f, 0.25f}, 1, 2, 2, 3);  // 2x2 gray image at 3x scale
  c.draw_text(20, 5, "A1", {255, 0, 0});
  c.save(path);
  int w = 0, h = 0;
  const auto rgb = png::read_rgb(path, w, h);
  REQUIRE(w == 40);
  REQUIRE(h == 20);
  auto px = [&](int x, int y) { return png::Color{rgb[(y * w + x) * 3], rgb[(y * w + x) * 3 + 1], rgb[(y * w + x) * 3 + 2]}; };
  CHECK(px(0, 0).b == 30);                 // background
  CHECK(px(2, 3).r == 0);                  // pixel (0,0) = 0.0 -> black
  CHECK(px(2 + 3, 3).r == 128);            // (0,1) = 0.5 -> 128
  CHECK(px(2 + 5, 3 + 2).r == 128);        // last pixel of the 3x3 block of (0,1) = 0.5
  CHECK(px(2, 3 + 3).r == 255);            // (1,0) = 1.0 -> 255
  CHECK(px(2 + 3 * 1, 3 + 3 * 1).r == 64); // (1,1) = 0.25 -> 64
  // 'A' row 0 is ".###.": columns 1..3 inked, column 0 not.
  CHECK(px(21, 5).r == 255);
  CHECK(px(21, 5).g == 0);
  CHECK(px(20, 5).r == 10);
  std::filesystem::remove(path);
  CHECK_THROWS_AS(png::write_rgb(path, 2, 2, std::vector<uint8_t>(5)), std::invalid_argument);
  CHECK_THROWS_AS(c.draw_image(0, 0, {0.f}, 2, 1, 1, 1), std::invalid_argument);
  CHECK_THROWS_AS(png::read_rgb(path, w, h), std::runtime_error);
}
