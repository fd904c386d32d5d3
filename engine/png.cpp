// PNG output through libpng, and the raster canvas with its 5x7 font (see png.h).
#include "engine/png.h"

#include <png.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <map>
#include <stdexcept>

namespace iif {
namespace png {
namespace {

struct File {
  std::FILE* f;
  explicit File(std::FILE* x) : f(x) {}
  ~File() {
    if (f) std::fclose(f);
  }
};

// The glyphs, 5 columns x 7 rows, '#' = ink. Lowercase letters are drawn as capitals.
const std::map<char, std::vector<const char*>>& font() {
  static const std::map<char, std::vector<const char*>> f = {
      {' ', {".....", ".....", ".....", ".....", ".....", ".....", "....."}},
      {'0', {".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."}},
      {'1', {"..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."}},
      {'2', {".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"}},
      {'3', {"####.", "....#", "....#", ".###.", "....#", "....#", "####."}},
      {'4', {"...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."}},
      {'5', {"#####", "#....", "####.", "....#", "....#", "#...#", ".###."}},
      {'6', {".###.", "#....", "#....", "####.", "#...#", "#...#", ".###."}},
      {'7', {"#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."}},
      {'8', {".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."}},
      {'9', {".###.", "#...#", "#...#", ".####", "....#", "....#", ".###."}},
      {'A', {".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"}},
      {'B', {"####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."}},
      {'C', {".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."}},
      {'D', {"####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."}},
      {'E', {"#####", "#....", "#....", "####.", "#....", "#....", "#####"}},
      {'F', {"#####", "#....", "#....", "####.", "#....", "#....", "#...."}},
      {'G', {".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"}},
      {'H', {"#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"}},
      {'I', {".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."}},
      {'J', {"..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."}},
      {'K', {"#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"}},
      {'L', {"#....", "#....", "#....", "#....", "#....", "#....", "#####"}},
      {'M', {"#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"}},
      {'N', {"#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#", "#...#"}},
      {'O', {".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."}},
      {'P', {"####.", "#...#", "#...#", "####.", "#....", "#....", "#...."}},
      {'Q', {".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"}},
      {'R', {"####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"}},
      {'S', {".####", "#....", "#....", ".###.", "....#", "....#", "####."}},
      {'T', {"#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."}},
      {'U', {"#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."}},
      {'V', {"#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."}},
      {'W', {"#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."}},
      {'X', {"#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"}},
      {'Y', {"#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."}},
      {'Z', {"#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"}},
      {'.', {".....", ".....", ".....", ".....", ".....", ".##..", ".##.."}},
      {',', {".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."}},
      {':', {".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."}},
      {'=', {".....", ".....", "#####", ".....", "#####", ".....", "....."}},
      {'-', {".....", ".....", ".....", "#####", ".....", ".....", "....."}},
      {'+', {".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."}},
      {'(', {"...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."}},
      {')', {".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."}},
      {'/', {".....", "....#", "...#.", "..#..", ".#...", "#....", "....."}},
      {'%', {"##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"}},
      {'_', {".....", ".....", ".....", ".....", ".....", ".....", "#####"}},
      {'?', {".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."}},
  };
  return f;
}

}  // namespace

void write_rgb(const std::string& path, int width, int height, const std::vector<uint8_t>& rgb) {
  if (width <= 0 || height <= 0 || rgb.size() != static_cast<std::size_t>(width) * height * 3)
    throw std::invalid_argument("png::write_rgb(" + path + "): " + std::to_string(rgb.size()) +
                                " bytes do not make a " + std::to_string(width) + "x" +
                                std::to_string(height) + " RGB image");
  const std::filesystem::path p(path);
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
  const std::string tmp = path + ".tmp";
  {
    File f(std::fopen(tmp.c_str(), "wb"));
    if (!f.f) throw std::runtime_error(path + ": cannot open for writing");
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    if (!png || !info) throw std::runtime_error(path + ": libpng could not start");
    if (setjmp(png_jmpbuf(png))) {
      png_destroy_write_struct(&png, &info);
      throw std::runtime_error(path + ": libpng failed while writing");
    }
    png_init_io(png, f.f);
    png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < height; ++y)
      png_write_row(png, const_cast<png_bytep>(rgb.data() + static_cast<std::size_t>(y) * width * 3));
    png_write_end(png, nullptr);
    png_destroy_write_struct(&png, &info);
  }
  std::filesystem::rename(tmp, path);
}

std::vector<uint8_t> read_rgb(const std::string& path, int& width, int& height) {
  File f(std::fopen(path.c_str(), "rb"));
  if (!f.f) throw std::runtime_error(path + ": cannot open");
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) throw std::runtime_error(path + ": libpng could not start");
  std::vector<uint8_t> out;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw std::runtime_error(path + ": not a readable PNG");
  }
  png_init_io(png, f.f);
  png_read_info(png, info);
  png_set_strip_16(png);
  png_set_palette_to_rgb(png);
  png_set_gray_to_rgb(png);
  png_set_strip_alpha(png);
  png_read_update_info(png, info);
  width = static_cast<int>(png_get_image_width(png, info));
  height = static_cast<int>(png_get_image_height(png, info));
  out.resize(static_cast<std::size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y) png_read_row(png, out.data() + static_cast<std::size_t>(y) * width * 3, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return out;
}

Canvas::Canvas(int width, int height, Color bg) : w_(width), h_(height) {
  if (width <= 0 || height <= 0) throw std::invalid_argument("Canvas: size must be positive");
  rgb_.resize(static_cast<std::size_t>(w_) * h_ * 3);
  fill_rect(0, 0, w_, h_, bg);
}

void Canvas::set(int x, int y, Color c) {
  if (x < 0 || y < 0 || x >= w_ || y >= h_) return;  // clip
  uint8_t* p = &rgb_[(static_cast<std::size_t>(y) * w_ + x) * 3];
  p[0] = c.r;
  p[1] = c.g;
  p[2] = c.b;
}

Color Canvas::get(int x, int y) const {
  const uint8_t* p = &rgb_.at((static_cast<std::size_t>(y) * w_ + x) * 3);
  return {p[0], p[1], p[2]};
}

void Canvas::fill_rect(int x, int y, int w, int h, Color c) {
  for (int j = y; j < y + h; ++j)
    for (int i = x; i < x + w; ++i) set(i, j, c);
}

void Canvas::draw_image(int x, int y, const std::vector<float>& chw, int channels, int rows, int cols, int scale) {
  if (channels != 1 && channels != 3)
    throw std::invalid_argument("Canvas::draw_image: 1 or 3 channels, got " + std::to_string(channels));
  if (chw.size() != static_cast<std::size_t>(channels) * rows * cols)
    throw std::invalid_argument("Canvas::draw_image: " + std::to_string(chw.size()) + " values for " +
                                std::to_string(channels) + "x" + std::to_string(rows) + "x" + std::to_string(cols));
  auto byte = [](float v) { return static_cast<uint8_t>(v <= 0.f ? 0 : v >= 1.f ? 255 : v * 255.f + 0.5f); };
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const std::size_t plane = static_cast<std::size_t>(rows) * cols, at = static_cast<std::size_t>(r) * cols + c;
      const Color col = channels == 1 ? Color{byte(chw[at]), byte(chw[at]), byte(chw[at])}
                                      : Color{byte(chw[at]), byte(chw[plane + at]), byte(chw[2 * plane + at])};
      fill_rect(x + c * scale, y + r * scale, scale, scale, col);
    }
}

void Canvas::draw_text(int x, int y, const std::string& text, Color c, int scale) {
  const auto& f = font();
  for (std::size_t k = 0; k < text.size(); ++k) {
    char ch = static_cast<char>(std::toupper(static_cast<unsigned char>(text[k])));
    auto it = f.find(ch);
    if (it == f.end()) it = f.find('?');
    for (int row = 0; row < 7; ++row)
      for (int col = 0; col < 5; ++col)
        if (it->second[row][col] == '#') fill_rect(x + (static_cast<int>(k) * 6 + col) * scale, y + row * scale, scale, scale, c);
  }
}

}  // namespace png
}  // namespace iif
