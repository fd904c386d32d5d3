// PNG output (libpng) and a small raster canvas with a built-in 5x7 pixel font, for figures such
// as the proponent/opponent grids. 8-bit RGB.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace iif {
namespace png {

// Writes an 8-bit RGB image (rgb: height x width x 3, row-major) atomically (tmp + rename).
// Throws std::runtime_error naming the file on failure.
void write_rgb(const std::string& path, int width, int height, const std::vector<uint8_t>& rgb);

// Reads an 8-bit RGB or grayscale PNG back as RGB (tests, tools).
std::vector<uint8_t> read_rgb(const std::string& path, int& width, int& height);

struct Color {
  uint8_t r = 0, g = 0, b = 0;
};

class Canvas {
 public:
  Canvas(int width, int height, Color background = {255, 255, 255});
  int width() const { return w_; }
  int height() const { return h_; }
  void set(int x, int y, Color c);
  Color get(int x, int y) const;
  void fill_rect(int x, int y, int w, int h, Color c);
  // Draws an image given as values in [0, 1] (channels 1 = gray or 3 = RGB planes, CHW), each
  // source pixel as a scale x scale block, top-left at (x, y).
  void draw_image(int x, int y, const std::vector<float>& chw, int channels, int rows, int cols, int scale);
  // Text in the 5x7 font (ASCII 32..126; others drawn as '?'), each font pixel scale x scale.
  void draw_text(int x, int y, const std::string& text, Color c, int scale = 1);
  static int text_width(const std::string& text, int scale = 1) { return static_cast<int>(text.size()) * 6 * scale; }
  void save(const std::string& path) const { write_rgb(path, w_, h_, rgb_); }

 private:
  int w_, h_;
  std::vector<uint8_t> rgb_;
};

}  // namespace png
}  // namespace iif
